/**
 * The exact ClientCapabilities VS Code sends, computed by vscode-languageclient itself (the same library the
 * extension uses) with a stand-in `vscode` module, since VS Code can't run here.
 */
import Module from 'node:module';

type AnyFn = (...args: unknown[]) => unknown;

function deep(name: string): unknown {
  const fn = function () {
    return deep(name + '()');
  };
  return new Proxy(fn, {
    get(_t, p) {
      if (p === 'version') {
        return '1.99.0';
      }
      if (p === 'then' || typeof p === 'symbol') {
        return undefined;
      }
      return deep(`${name}.${String(p)}`);
    },
    apply() {
      return deep(name + '()');
    },
    construct() {
      return deep('new ' + name) as object;
    },
  });
}

let cached: Record<string, unknown> | undefined;

export function vscodeClientCapabilities(): Record<string, unknown> {
  if (cached) {
    return cached;
  }
  const mod = Module as unknown as { _load: AnyFn };
  const original = mod._load;
  mod._load = function (this: unknown, ...args: unknown[]) {
    if (args[0] === 'vscode') {
      return deep('vscode');
    }
    return original.apply(this, args);
  };
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const lc = require('vscode-languageclient/node') as {
      LanguageClient: new (...a: unknown[]) => { computeClientCapabilities(): Record<string, unknown> };
    };
    const client = new lc.LanguageClient('dg', 'dg', { command: 'dg-lsp' }, { documentSelector: [{ scheme: 'file' }] });
    cached = JSON.parse(JSON.stringify(client.computeClientCapabilities())) as Record<string, unknown>;
    return cached;
  } finally {
    mod._load = original;
  }
}

/**
 * Just enough of the `vscode` API to load and activate the extension under node (VS Code itself can't be
 * downloaded here). Calls the tests care about are recorded; anything else resolves to an inert stand-in.
 */
import Module from 'node:module';

type AnyFn = (...args: unknown[]) => unknown;

function inert(name: string): unknown {
  const fn = function () {
    return inert(name + '()');
  };
  return new Proxy(fn, {
    get(_t, p) {
      if (p === 'then' || typeof p === 'symbol') {
        return p === Symbol.iterator ? function* () {} : undefined;
      }
      return inert(`${name}.${String(p)}`);
    },
    apply() {
      return inert(name + '()');
    },
    construct() {
      return inert('new ' + name) as object;
    },
  });
}

/** `obj`, with every missing property falling back to an inert stand-in. */
function lenient<T extends object>(name: string, obj: T): T {
  return new Proxy(obj, {
    get(t, p, r) {
      if (p in t || typeof p === 'symbol' || p === 'then') {
        return Reflect.get(t, p, r);
      }
      return inert(`${name}.${String(p)}`);
    },
  });
}

export interface Recorded {
  errors: string[];
  warnings: string[];
  infos: string[];
  log: string[];
  commands: Map<string, AnyFn>;
  configListeners: ((e: { affectsConfiguration(s: string): boolean }) => void)[];
  statusBar: { text: string; tooltip: string; command: string };
}

export function installFakeVscode(config: Record<string, unknown>): Recorded {
  const rec: Recorded = {
    errors: [],
    warnings: [],
    infos: [],
    log: [],
    commands: new Map(),
    configListeners: [],
    statusBar: { text: '', tooltip: '', command: '' },
  };
  const disposable = { dispose() {} };
  const event = () => disposable;
  const channel = (name: string) =>
    lenient(`channel(${name})`, {
      name,
      logLevel: 2,
      onDidChangeLogLevel: event,
      append: (s: string) => rec.log.push(s),
      appendLine: (s: string) => rec.log.push(s),
      replace: () => undefined,
      clear: () => undefined,
      show: () => undefined,
      hide: () => undefined,
      dispose: () => undefined,
      trace: (s: string) => rec.log.push(s),
      debug: (s: string) => rec.log.push(s),
      info: (s: string) => rec.log.push(s),
      warn: (s: string) => rec.log.push(s),
      error: (s: string | Error) => rec.log.push(String(s)),
    });
  const getConfiguration = (section?: string) => {
    const prefix = section ? section + '.' : '';
    const lookup = (key: string) => config[prefix + key];
    return lenient('configuration', {
      get: (key: string, def?: unknown) => (lookup(key) === undefined ? def : lookup(key)),
      has: (key: string) => lookup(key) !== undefined,
      inspect: (key: string) => ({ key: prefix + key, globalValue: lookup(key) }),
      update: async () => undefined,
    });
  };
  class EventEmitter<T> {
    private listeners: ((e: T) => void)[] = [];
    event = (l: (e: T) => void) => {
      this.listeners.push(l);
      return disposable;
    };
    fire(e: T) {
      for (const l of this.listeners) {
        l(e);
      }
    }
    dispose() {}
  }
  class ThemeColor {
    constructor(public id: string) {}
  }
  class Disposable {
    constructor(private fn: () => void) {}
    static from(...ds: { dispose(): unknown }[]) {
      return new Disposable(() => ds.forEach((d) => d.dispose()));
    }
    dispose() {
      this.fn();
    }
  }
  const statusItem = lenient('statusBarItem', {
    set text(v: string) {
      rec.statusBar.text = v;
    },
    get text() {
      return rec.statusBar.text;
    },
    set tooltip(v: string) {
      rec.statusBar.tooltip = v;
    },
    get tooltip() {
      return rec.statusBar.tooltip;
    },
    set command(v: string) {
      rec.statusBar.command = v;
    },
    get command() {
      return rec.statusBar.command;
    },
    name: '',
    backgroundColor: undefined as unknown,
    show: () => undefined,
    hide: () => undefined,
    dispose: () => undefined,
  });
  const vscode = lenient('vscode', {
    version: '1.99.0',
    EventEmitter,
    ThemeColor,
    Disposable,
    StatusBarAlignment: { Left: 1, Right: 2 },
    ProgressLocation: { SourceControl: 1, Window: 10, Notification: 15 },
    LogLevel: { Off: 0, Trace: 1, Debug: 2, Info: 3, Warning: 4, Error: 5 },
    window: lenient('window', {
      createOutputChannel: (name: string) => channel(name),
      createStatusBarItem: () => statusItem,
      showErrorMessage: (m: string) => {
        rec.errors.push(m);
        return Promise.resolve(undefined);
      },
      showWarningMessage: (m: string) => {
        rec.warnings.push(m);
        return Promise.resolve(undefined);
      },
      showInformationMessage: (m: string) => {
        rec.infos.push(m);
        return Promise.resolve(undefined);
      },
      withProgress: (_o: unknown, task: AnyFn) =>
        Promise.resolve(task({ report: () => undefined }, { isCancellationRequested: false, onCancellationRequested: event })),
      activeTextEditor: undefined,
      visibleTextEditors: [],
      tabGroups: lenient('tabGroups', { all: [] }),
    }),
    workspace: lenient('workspace', {
      getConfiguration,
      onDidChangeConfiguration: (l: Recorded['configListeners'][number]) => {
        rec.configListeners.push(l);
        return disposable;
      },
      workspaceFolders: undefined,
      textDocuments: [],
      notebookDocuments: [],
    }),
    commands: lenient('commands', {
      registerCommand: (id: string, fn: AnyFn) => {
        rec.commands.set(id, fn);
        return disposable;
      },
      executeCommand: async () => undefined,
    }),
    extensions: lenient('extensions', { getExtension: () => undefined }),
    env: lenient('env', { appName: 'Visual Studio Code', language: 'en', machineId: 'test', sessionId: 'test', uiKind: 1 }),
    UIKind: { Desktop: 1, Web: 2 },
  });
  const mod = Module as unknown as { _load: AnyFn };
  const original = mod._load;
  mod._load = function (this: unknown, ...args: unknown[]) {
    if (args[0] === 'vscode') {
      return vscode;
    }
    return original.apply(this, args);
  };
  return rec;
}

export function fakeContext(): { subscriptions: { dispose(): unknown }[] } {
  return { subscriptions: [] };
}

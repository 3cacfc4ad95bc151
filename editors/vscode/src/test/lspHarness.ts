/**
 * Drive a language server over stdio with vscode-languageserver-protocol / vscode-jsonrpc (the libraries
 * inside vscode-languageclient), initializing with VS Code's own client capabilities.
 */
import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  ApplyWorkspaceEditParams,
  ApplyWorkspaceEditRequest,
  ConfigurationRequest,
  DidOpenTextDocumentNotification,
  ExitNotification,
  InitializeRequest,
  InitializeResult,
  InitializedNotification,
  LogMessageNotification,
  ProtocolConnection,
  ShutdownRequest,
  StreamMessageReader,
  StreamMessageWriter,
  TextEdit,
  WorkDoneProgressCreateRequest,
  WorkspaceEdit,
  createProtocolConnection,
} from 'vscode-languageserver-protocol/node';
import { TextDocument } from 'vscode-languageserver-textdocument';
import { vscodeClientCapabilities } from './vscodeCapabilities';

export const REPO = path.resolve(__dirname, '..', '..', '..', '..', '..');

export interface DgStatus {
  state: 'loading' | 'ready' | 'error';
  model?: string;
  device?: string;
  message?: string;
}

export interface ServerSpec {
  /** `test engine`: this checkout's server on the tests' engine; `installed`: an installed dg-lsp on a real model. */
  name: 'test engine' | 'installed';
  command: string[];
  env?: Record<string, string>;
  /** Known answers (the test engine); undefined with a real model. */
  expect?: { completion: string; second: string; rewriteMarker: string };
}

/** The real server on the tests' deterministic engine: `tests/fake_server.py` runs dg-lsp with JSON models loaded as
 * the engine of `tests/fake_engine.py`. */
export const FAKE_SERVER = path.join(REPO, 'tests', 'fake_server.py');

/** The test engine's answers: its candidates, and the rewrite of greet(), which it finds far likelier than the
 * function as it is (beyond the price of the change: pipeline.MARGIN, rewrite_block.REWRITE_CHANNEL). */
export const TEST_ENGINE = {
  texts: ['return a + b', 'return b + a'],
  rewrite: 'def greet(name):\n    return f"hello {name}"\n',
  scores: {
    'def greet(name):\n    return f"hello {name}"': 400.0,
    'def greet(name):\n    return f"hello {name}"\n': 400.0,
  },
};

/**
 * The Python for the test engine's server (and the parse checks): `DG_PYTHON`, else the checkout's `.venv`, else
 * `python3`. It needs dg-lsp's dependencies; see `pythonSkipReason`.
 */
export function repoPython(): string {
  const venv = path.join(REPO, '.venv', 'bin', 'python');
  return process.env.DG_PYTHON ?? (fs.existsSync(venv) ? venv : 'python3');
}

/** Why the test engine's server cannot run here (its Python lacks dg-lsp's dependencies), or undefined when it can. */
export function pythonSkipReason(): string | undefined {
  const r = spawnSync(repoPython(), ['-c', 'import pygls, lsprotocol, dg_lsp'], { cwd: REPO, timeout: 30000 });
  if (r.status === 0) {
    return undefined;
  }
  return `${repoPython()} cannot import pygls and dg_lsp (set DG_PYTHON to a Python with dg-lsp installed)`;
}

/** Print a skip where nobody can miss it (node --test only lists skips in its summary). */
export function announceSkip(what: string, why: string): void {
  const line = `*** SKIPPED: ${what}: ${why} ***`;
  process.stderr.write(`\n${'*'.repeat(Math.min(line.length, 120))}\n${line}\n${'*'.repeat(Math.min(line.length, 120))}\n\n`);
}

/** Split a server command given in the environment: a JSON array, or words separated by spaces. */
export function parseCommand(value: string): string[] {
  const trimmed = value.trim();
  if (trimmed.startsWith('[')) {
    const parsed = JSON.parse(trimmed) as unknown;
    if (!Array.isArray(parsed) || !parsed.every((p) => typeof p === 'string') || parsed.length === 0) {
      throw new Error(`expected a JSON array of strings, got ${value}`);
    }
    return parsed as string[];
  }
  return trimmed.split(/\s+/).filter(Boolean);
}

/** The real server over stdio on the test engine (`spec`: a `tests/fake_engine.py` spec, e.g. `{ exit: 3 }`). */
export function testEngineServer(spec: Record<string, unknown> = TEST_ENGINE, extra: string[] = []): ServerSpec {
  return {
    name: 'test engine',
    command: [repoPython(), FAKE_SERVER, '--stdio', '--model', JSON.stringify(spec), ...extra],
    expect: { completion: TEST_ENGINE.texts[0], second: TEST_ENGINE.texts[1], rewriteMarker: 'return f"hello {name}"' },
  };
}

/**
 * An installed dg-lsp on the real model `DG_LSP_TEST_MODEL` names (`default`: its embedded model); undefined when
 * that is unset or no dg-lsp is found. The server: `DG_LSP_COMMAND` (the `dg-lsp` executable, or a whole command as
 * a JSON array or words, e.g. `["/venv/bin/dg-lsp", "--stdio"]`, used as given; `DG_LSP_SERVER_CMD` is an older name
 * for it), else `dg-lsp` in the checkout's `.venv`, else on `PATH`.
 */
export function realServer(extra: string[] = []): ServerSpec | undefined {
  const model = process.env.DG_LSP_TEST_MODEL;
  if (!model) {
    return undefined;
  }
  const override = process.env.DG_LSP_COMMAND ?? process.env.DG_LSP_SERVER_CMD;
  if (override) {
    const command = parseCommand(override);
    if (command.length > 1) {
      return { name: 'installed', command: [...command, ...extra] };
    }
    return withModel(command[0], model, extra);
  }
  const candidates = [path.join(REPO, '.venv', 'bin', 'dg-lsp')];
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (dir) {
      candidates.push(path.join(dir, 'dg-lsp'));
    }
  }
  const exe = candidates.find((c) => {
    try {
      fs.accessSync(c, fs.constants.X_OK);
      return fs.statSync(c).isFile();
    } catch {
      return false;
    }
  });
  return exe ? withModel(exe, model, extra) : undefined;
}

function withModel(exe: string, model: string, extra: string[]): ServerSpec {
  const args = ['--stdio', ...(model === 'default' ? [] : ['--model', model])];
  return { name: 'installed', command: [exe, ...args, ...extra] };
}

export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

export function applyTextEdits(text: string, edits: TextEdit[]): string {
  const doc = TextDocument.create('file:///x', 'python', 0, text);
  return TextDocument.applyEdits(doc, edits);
}

/** TextEdits for `uri` from either `changes` or `documentChanges`. */
export function editsFor(edit: WorkspaceEdit, uri: string): TextEdit[] {
  const out: TextEdit[] = [...(edit.changes?.[uri] ?? [])];
  for (const dc of edit.documentChanges ?? []) {
    if ('textDocument' in dc && dc.textDocument.uri === uri) {
      out.push(...(dc.edits as TextEdit[]));
    }
  }
  return out;
}

export class LspSession {
  readonly statuses: DgStatus[] = [];
  readonly progress: { token: string | number; value: { kind: string; percentage?: number } }[] = [];
  readonly appliedEdits: ApplyWorkspaceEditParams[] = [];
  readonly logs: string[] = [];
  stderr = '';
  exitCode: number | null | undefined = undefined;
  configuration: unknown = {};
  private waiters: (() => void)[] = [];
  readonly exited: Promise<number | null>;

  private constructor(
    readonly spec: ServerSpec,
    readonly proc: ChildProcess,
    readonly conn: ProtocolConnection,
  ) {
    this.exited = new Promise((resolve) => {
      proc.on('exit', (code) => {
        this.exitCode = code;
        this.poke();
        resolve(code);
      });
    });
  }

  static start(spec: ServerSpec): LspSession {
    const [cmd, ...args] = spec.command;
    const proc = spawn(cmd, args, {
      cwd: REPO,
      env: { ...process.env, ...(spec.env ?? {}) },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const conn = createProtocolConnection(new StreamMessageReader(proc.stdout!), new StreamMessageWriter(proc.stdin!));
    const s = new LspSession(spec, proc, conn);
    proc.stderr!.on('data', (d: Buffer) => {
      s.stderr += d.toString();
    });
    proc.on('error', (e) => {
      s.stderr += `\nspawn error: ${e.message}`;
      s.exitCode = -1;
      s.poke();
    });
    conn.onNotification('dg/status', (p: DgStatus) => {
      s.statuses.push(p);
      s.poke();
    });
    conn.onNotification(LogMessageNotification.type, (p) => {
      s.logs.push(p.message);
      s.poke();
    });
    conn.onRequest(WorkDoneProgressCreateRequest.type, () => undefined);
    conn.onNotification('$/progress', (p: { token: string | number; value: { kind: string; percentage?: number } }) => {
      s.progress.push(p);
      s.poke();
    });
    conn.onRequest(ApplyWorkspaceEditRequest.type, (p) => {
      s.appliedEdits.push(p);
      s.poke();
      return { applied: true };
    });
    conn.onRequest(ConfigurationRequest.type, (p) =>
      p.items.map((item) => (item.section === 'dg' ? s.configuration : null)),
    );
    // Anything else VS Code would answer (client/registerCapability, window/showMessageRequest, ...).
    for (const method of [
      'client/registerCapability',
      'client/unregisterCapability',
      'window/showMessageRequest',
      'window/showDocument',
      'workspace/workspaceFolders',
      'workspace/codeLens/refresh',
      'workspace/semanticTokens/refresh',
      'workspace/inlayHint/refresh',
      'workspace/inlineValue/refresh',
      'workspace/diagnostic/refresh',
      'workspace/foldingRange/refresh',
    ]) {
      conn.onRequest(method, () => null);
    }
    conn.onError(() => undefined);
    conn.onClose(() => s.poke());
    conn.listen();
    return s;
  }

  private poke(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) {
      f();
    }
  }

  /** Resolve when `pred()` holds; reject on timeout or if the server exits first. */
  async waitFor<T>(pred: () => T | undefined | false, ms: number, what: string): Promise<T> {
    const deadline = Date.now() + ms;
    for (;;) {
      const v = pred();
      if (v) {
        return v;
      }
      if (this.exitCode !== undefined) {
        throw new Error(`server exited (code ${this.exitCode}) while waiting for ${what}\n${this.stderr.slice(-3000)}`);
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(`timed out after ${ms} ms waiting for ${what}\nstderr:\n${this.stderr.slice(-3000)}`);
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(left, 250));
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  async initialize(initializationOptions: unknown, ms = 20000): Promise<InitializeResult> {
    this.configuration = initializationOptions;
    const result = await withTimeout(
      this.conn.sendRequest(InitializeRequest.type, {
        processId: process.pid,
        clientInfo: { name: 'Visual Studio Code', version: '1.99.0' },
        locale: 'en',
        rootUri: null,
        workspaceFolders: null,
        capabilities: vscodeClientCapabilities(),
        initializationOptions,
        trace: 'off',
      }),
      ms,
      'initialize',
    );
    await this.conn.sendNotification(InitializedNotification.type, {});
    return result;
  }

  async open(uri: string, languageId: string, text: string): Promise<void> {
    await this.conn.sendNotification(DidOpenTextDocumentNotification.type, {
      textDocument: { uri, languageId, version: 1, text },
    });
  }

  /** shutdown + exit, then make sure the process is gone. */
  async close(ms = 5000): Promise<number | null | undefined> {
    if (this.exitCode === undefined) {
      try {
        await withTimeout(this.conn.sendRequest(ShutdownRequest.type), ms, 'shutdown');
        await this.conn.sendNotification(ExitNotification.type);
        await withTimeout(this.exited, ms, 'exit');
      } catch {
        // fall through to kill
      }
    }
    if (this.exitCode === undefined) {
      this.proc.kill('SIGKILL');
      await withTimeout(this.exited, ms, 'kill').catch(() => undefined);
    }
    this.conn.dispose();
    return this.exitCode;
  }
}

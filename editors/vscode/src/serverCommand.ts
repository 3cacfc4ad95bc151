/**
 * Where is `dg-lsp`? Pure apart from the injected file-system probe, so it runs under `node --test`.
 *
 * Order:
 *  1. `dg.server.path` (a path, or a bare name looked up on PATH),
 *  2. `dg.server.python`: `dg-lsp` next to that interpreter, else `python -c "...dg_lsp.cli.main()"`,
 *  3. the Python extension's active interpreter, if `dg-lsp` sits next to it,
 *  4. `.venv/` or `venv/` in a workspace folder,
 *  5. `dg-lsp` on PATH.
 */
import * as path from 'path';

export interface ResolveInput {
  serverPath?: string;
  serverArgs?: string[];
  python?: string;
  /** Interpreter selected in the Python extension, if any. */
  activePython?: string;
  workspaceFolders?: string[];
  env: Record<string, string | undefined>;
  platform: NodeJS.Platform;
  homeDir?: string;
  /** true when `p` is an existing regular file (and, on POSIX, executable). */
  isExecutable: (p: string) => boolean;
}

export interface ServerCommand {
  command: string;
  args: string[];
  /** Which rule found it, for the log. */
  source: 'dg.server.path' | 'dg.server.python' | 'python extension' | 'workspace venv' | 'PATH';
}

export class ServerNotFoundError extends Error {
  constructor(
    message: string,
    public readonly searched: string[],
  ) {
    super(message);
    this.name = 'ServerNotFoundError';
  }
}

export const DEFAULT_ARGS = ['--stdio'];
export const SERVER_NAME = 'dg-lsp';
/** Used when only an interpreter is known: works even without the console script. */
export const PYTHON_LAUNCHER = 'import sys; from dg_lsp.cli import main; sys.exit(main())';

function pathApi(platform: NodeJS.Platform): path.PlatformPath {
  return platform === 'win32' ? path.win32 : path.posix;
}

function exeNames(name: string, platform: NodeJS.Platform, env: Record<string, string | undefined>): string[] {
  if (platform !== 'win32') {
    return [name];
  }
  if (/\.[a-z0-9]+$/i.test(name)) {
    return [name];
  }
  const exts = (env.PATHEXT ?? '.COM;.EXE;.BAT;.CMD').split(';').filter(Boolean);
  return [...exts.map((e) => name + e.toLowerCase()), ...exts.map((e) => name + e), name];
}

export function expandHome(p: string, homeDir: string | undefined, workspaceFolders: string[] = []): string {
  let out = p.trim();
  if (homeDir && (out === '~' || out.startsWith('~/') || out.startsWith('~\\'))) {
    out = homeDir + out.slice(1);
  }
  if (homeDir) {
    out = out.replace(/\$\{userHome\}/g, homeDir);
  }
  if (workspaceFolders.length > 0) {
    out = out.replace(/\$\{workspaceFolder\}/g, workspaceFolders[0]);
  }
  return out;
}

export function findOnPath(
  name: string,
  env: Record<string, string | undefined>,
  platform: NodeJS.Platform,
  isExecutable: (p: string) => boolean,
): string | undefined {
  const p = pathApi(platform);
  const pathVar = env.PATH ?? env.Path ?? '';
  const sep = platform === 'win32' ? ';' : ':';
  for (const dir of pathVar.split(sep)) {
    if (!dir) {
      continue;
    }
    for (const candidate of exeNames(name, platform, env)) {
      const full = p.join(dir, candidate);
      if (isExecutable(full)) {
        return full;
      }
    }
  }
  return undefined;
}

/** `dg-lsp` next to an interpreter (`venv/bin/python` -> `venv/bin/dg-lsp`, `Scripts\\dg-lsp.exe` on Windows). */
export function scriptNextTo(python: string, input: ResolveInput): string | undefined {
  const p = pathApi(input.platform);
  const dir = p.dirname(python);
  const dirs = input.platform === 'win32' ? [dir, p.join(dir, 'Scripts')] : [dir];
  for (const d of dirs) {
    for (const name of exeNames(SERVER_NAME, input.platform, input.env)) {
      const full = p.join(d, name);
      if (input.isExecutable(full)) {
        return full;
      }
    }
  }
  return undefined;
}

export function resolveServerCommand(input: ResolveInput): ServerCommand {
  const p = pathApi(input.platform);
  const args = input.serverArgs && input.serverArgs.length > 0 ? [...input.serverArgs] : [...DEFAULT_ARGS];
  const searched: string[] = [];
  const folders = input.workspaceFolders ?? [];

  const configured = input.serverPath?.trim();
  if (configured) {
    const expanded = expandHome(configured, input.homeDir, folders);
    const looksLikePath = expanded.includes('/') || expanded.includes('\\');
    if (looksLikePath) {
      if (input.isExecutable(expanded)) {
        return { command: expanded, args, source: 'dg.server.path' };
      }
      throw new ServerNotFoundError(
        `dg.server.path is set to "${configured}", but no executable file is there.`,
        [expanded],
      );
    }
    const found = findOnPath(expanded, input.env, input.platform, input.isExecutable);
    if (found) {
      return { command: found, args, source: 'dg.server.path' };
    }
    throw new ServerNotFoundError(`dg.server.path is set to "${configured}", but it is not on PATH.`, [
      `PATH for ${expanded}`,
    ]);
  }

  const python = input.python?.trim();
  if (python) {
    const interp = expandHome(python, input.homeDir, folders);
    const script = scriptNextTo(interp, input);
    if (script) {
      return { command: script, args, source: 'dg.server.python' };
    }
    const looksLikePath = interp.includes('/') || interp.includes('\\');
    const interpPath = looksLikePath ? interp : findOnPath(interp, input.env, input.platform, input.isExecutable);
    if (interpPath && input.isExecutable(interpPath)) {
      return { command: interpPath, args: ['-c', PYTHON_LAUNCHER, ...args], source: 'dg.server.python' };
    }
    throw new ServerNotFoundError(`dg.server.python is set to "${python}", but that interpreter was not found.`, [
      interp,
    ]);
  }

  if (input.activePython) {
    const script = scriptNextTo(input.activePython, input);
    searched.push(p.dirname(input.activePython));
    if (script) {
      return { command: script, args, source: 'python extension' };
    }
  }

  for (const folder of folders) {
    for (const venv of ['.venv', 'venv']) {
      const bin = input.platform === 'win32' ? p.join(folder, venv, 'Scripts') : p.join(folder, venv, 'bin');
      searched.push(bin);
      for (const name of exeNames(SERVER_NAME, input.platform, input.env)) {
        const full = p.join(bin, name);
        if (input.isExecutable(full)) {
          return { command: full, args, source: 'workspace venv' };
        }
      }
    }
  }

  const onPath = findOnPath(SERVER_NAME, input.env, input.platform, input.isExecutable);
  searched.push('PATH');
  if (onPath) {
    return { command: onPath, args, source: 'PATH' };
  }
  throw new ServerNotFoundError(
    'dg-lsp was not found. Install it (`pip install dg-lsp`) into a Python environment and set ' +
      '"dg.server.python" to that interpreter, or set "dg.server.path" to the dg-lsp executable.',
    searched,
  );
}

import * as assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  PYTHON_LAUNCHER,
  ResolveInput,
  ServerNotFoundError,
  expandHome,
  resolveServerCommand,
} from '../serverCommand';

function input(files: string[], over: Partial<ResolveInput> = {}): ResolveInput {
  const set = new Set(files);
  return {
    env: { PATH: '/usr/local/bin:/usr/bin' },
    platform: 'linux',
    homeDir: '/home/u',
    isExecutable: (p) => set.has(p),
    ...over,
  };
}

test('dg.server.path wins, with ~ expanded and args passed through', () => {
  const r = resolveServerCommand(
    input(['/home/u/bin/dg-lsp', '/usr/bin/dg-lsp'], { serverPath: '~/bin/dg-lsp', serverArgs: ['--stdio', '--log-level', 'debug'] }),
  );
  assert.deepEqual(r, { command: '/home/u/bin/dg-lsp', args: ['--stdio', '--log-level', 'debug'], source: 'dg.server.path' });
});

test('dg.server.path pointing nowhere is a clear error, not a fallback', () => {
  assert.throws(
    () => resolveServerCommand(input(['/usr/bin/dg-lsp'], { serverPath: '/opt/nope/dg-lsp' })),
    (e: unknown) => e instanceof ServerNotFoundError && /dg\.server\.path.*no executable/.test(e.message),
  );
});

test('a bare dg.server.path is looked up on PATH', () => {
  const r = resolveServerCommand(input(['/usr/bin/my-dg'], { serverPath: 'my-dg' }));
  assert.equal(r.command, '/usr/bin/my-dg');
});

test('dg.server.python: the script next to the interpreter', () => {
  const r = resolveServerCommand(input(['/venv/bin/python', '/venv/bin/dg-lsp', '/usr/bin/dg-lsp'], { python: '/venv/bin/python' }));
  assert.deepEqual(r, { command: '/venv/bin/dg-lsp', args: ['--stdio'], source: 'dg.server.python' });
});

test('dg.server.python without the script: run the module through the interpreter', () => {
  const r = resolveServerCommand(input(['/venv/bin/python3'], { python: '/venv/bin/python3' }));
  assert.deepEqual(r, { command: '/venv/bin/python3', args: ['-c', PYTHON_LAUNCHER, '--stdio'], source: 'dg.server.python' });
});

test('dg.server.python missing is a clear error', () => {
  assert.throws(
    () => resolveServerCommand(input([], { python: '/nope/python' })),
    (e: unknown) => e instanceof ServerNotFoundError && /dg\.server\.python/.test(e.message),
  );
});

test('the Python extension interpreter, then the workspace venv, then PATH', () => {
  const files = ['/env/bin/dg-lsp', '/ws/.venv/bin/dg-lsp', '/usr/bin/dg-lsp'];
  assert.equal(
    resolveServerCommand(input(files, { activePython: '/env/bin/python', workspaceFolders: ['/ws'] })).source,
    'python extension',
  );
  assert.equal(
    resolveServerCommand(input(files, { activePython: '/other/bin/python', workspaceFolders: ['/ws'] })).command,
    '/ws/.venv/bin/dg-lsp',
  );
  assert.deepEqual(resolveServerCommand(input(files)), { command: '/usr/bin/dg-lsp', args: ['--stdio'], source: 'PATH' });
});

test('nothing found: one error that says how to fix it and where it looked', () => {
  try {
    resolveServerCommand(input([], { workspaceFolders: ['/ws'] }));
    assert.fail('expected an error');
  } catch (e) {
    assert.ok(e instanceof ServerNotFoundError);
    assert.match(e.message, /pip install dg-lsp/);
    assert.match(e.message, /dg\.server\.path/);
    assert.ok(e.searched.includes('/ws/.venv/bin'));
    assert.ok(e.searched.includes('PATH'));
  }
});

test('Windows: Scripts folder and PATHEXT', () => {
  const r = resolveServerCommand(
    input(['C:\\env\\Scripts\\dg-lsp.exe'], {
      platform: 'win32',
      env: { Path: 'C:\\Windows', PATHEXT: '.EXE;.CMD' },
      python: 'C:\\env\\python.exe',
    }),
  );
  assert.equal(r.command, 'C:\\env\\Scripts\\dg-lsp.exe');
  const onPath = resolveServerCommand(
    input(['C:\\tools\\dg-lsp.cmd'], { platform: 'win32', env: { Path: 'C:\\Windows;C:\\tools', PATHEXT: '.EXE;.CMD' } }),
  );
  assert.equal(onPath.command, 'C:\\tools\\dg-lsp.cmd');
});

test('expandHome handles ~, ${userHome} and ${workspaceFolder}', () => {
  assert.equal(expandHome('~/x', '/h'), '/h/x');
  assert.equal(expandHome('${userHome}/x', '/h'), '/h/x');
  assert.equal(expandHome('${workspaceFolder}/.venv/bin/dg-lsp', '/h', ['/ws']), '/ws/.venv/bin/dg-lsp');
});

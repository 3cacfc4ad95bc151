/**
 * The extension itself, activated against a stand-in `vscode` API: it must start the server and show its status,
 * and a missing or crashing server must give exactly one error message (with the log one click away) and a
 * bounded number of restarts. One scenario per process (node --test isolates files), so each file loads fresh.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { fakeContext, installFakeVscode, Recorded } from './fakeVscode';
import { FAKE_SERVER, announceSkip, pythonSkipReason, repoPython } from './lspHarness';

/** Test engine specs (tests/fake_engine.py) as `dg.model` values: no slash, so the status bar shows them whole. */
const MODEL = JSON.stringify({ texts: ['pass'] });
const OTHER_MODEL = JSON.stringify({ texts: ['return 1'] });
const CRASH = JSON.stringify({ exit: 3 }); // the test engine ends the server's process while it loads
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'dg-vscode-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

async function until<T>(what: string, ms: number, pred: () => T | undefined | false): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = pred();
    if (v) {
      return v;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${ms} ms: ${what}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

function script(name: string, body: string): string {
  const p = path.join(tmp, name);
  fs.writeFileSync(p, `#!/bin/sh\n${body}\n`, { mode: 0o755 });
  return p;
}

type Ext = { activate(ctx: unknown): Promise<void>; deactivate(): Promise<void> };

async function activate(config: Record<string, unknown>): Promise<{ rec: Recorded; ext: Ext }> {
  const rec = installFakeVscode(config);
  // Loaded after the stand-in is installed; each test file runs in its own process.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const ext = require('../extension') as Ext;
  await ext.activate(fakeContext());
  return { rec, ext };
}

const noPython = pythonSkipReason();
if (noPython) {
  announceSkip('the extension activated against dg-lsp on the test engine', noPython);
}

test('the extension: server start, status bar, one message for a crash loop, bounded restarts', { skip: noPython }, async (t) => {
  const counter = path.join(tmp, 'spawns');
  const starts = path.join(tmp, 'starts');
  // dg-lsp: the real server on the test engine (its model from the flag, or from dg.model once that is set).
  const server = script(
    'dg-lsp',
    `[ -f "${path.join(tmp, 'crash')}" ] && { echo x >> "${counter}"; exec "${repoPython()}" "${FAKE_SERVER}" --stdio --model '${CRASH}'; }\n` +
      `echo x >> "${starts}"\n` +
      `exec "${repoPython()}" "${FAKE_SERVER}" "$@" --model '${MODEL}'`,
  );
  const config: Record<string, unknown> = { 'dg.server.path': server, 'dg.server.maxRestarts': 2, 'dg.candidates': 2 };
  const { rec, ext } = await activate(config);

  await t.test('starts the server and shows model and device from dg/status', async () => {
    await until('ready in the status bar', 20000, () => rec.statusBar.text === `$(sparkle) dg: ${MODEL} · cpu`);
    assert.equal(rec.statusBar.command, 'dg.showLog');
    assert.deepEqual(rec.errors, []);
    for (const id of ['dg.showLog', 'dg.restartServer', 'dg.rewriteSelection']) {
      assert.ok(rec.commands.has(id), id);
    }
  });

  await t.test('a settings change is pushed without a restart; a server setting restarts', async () => {
    const affects = (changed: string) => (s: string) => changed === s || changed.startsWith(s + '.');
    config['dg.model'] = OTHER_MODEL;
    for (const l of rec.configListeners) {
      l({ affectsConfiguration: affects('dg.model') });
    }
    // The server got the pushed settings: it loaded the other model, in the process it was already running.
    await until('the other model ready in the status bar', 20000, () => rec.statusBar.text === `$(sparkle) dg: ${OTHER_MODEL} · cpu`);
    assert.equal(fs.readFileSync(starts, 'utf8').trim().split('\n').length, 1, 'started once: pushed, not restarted');
    delete config['dg.model']; // the crash loop below runs on the flag's model
  });

  await t.test('a server that keeps crashing: 1 start + maxRestarts, then one error with "Show log"', async () => {
    fs.writeFileSync(path.join(tmp, 'crash'), '');
    await (rec.commands.get('dg.restartServer')!() as Promise<void>);
    await until('the give-up message', 30000, () => rec.errors.length > 0);
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(fs.readFileSync(counter, 'utf8').trim().split('\n').length, 3, 'spawns');
    assert.equal(rec.errors.length, 1, rec.errors.join('\n'));
    assert.match(rec.errors[0], /DiffusionGemma: dg-lsp/);
    assert.equal(rec.statusBar.text, '$(error) dg');
  });

  await t.test('no server at the configured path: one clear message, nothing spawned', async () => {
    rec.errors.length = 0;
    const restart = rec.commands.get('dg.restartServer')!;
    fs.rmSync(server);
    await (restart() as Promise<void>);
    assert.equal(rec.errors.length, 1);
    assert.match(rec.errors[0], /dg\.server\.path is set to .*no executable file/);
  });

  await ext.deactivate();
});

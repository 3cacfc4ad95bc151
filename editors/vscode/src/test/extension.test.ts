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
import { REPO, announceSkip, repoPython, stubSkipReason } from './lspHarness';

const STUB = path.join(REPO, 'editors', 'testing', 'stub_server.py');
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

const noStub = stubSkipReason();
if (noStub) {
  announceSkip('the extension activated against the stub server', noStub);
}

test('the extension: server start, status bar, one message for a crash loop, bounded restarts', { skip: noStub }, async (t) => {
  const counter = path.join(tmp, 'spawns');
  const server = script(
    'dg-lsp',
    `[ -f "${path.join(tmp, 'crash')}" ] && { echo x >> "${counter}"; exec "${repoPython()}" "${STUB}" --stdio --crash; }\n` +
      `exec "${repoPython()}" "${STUB}" "$@"`,
  );
  const { rec, ext } = await activate({ 'dg.server.path': server, 'dg.server.maxRestarts': 2, 'dg.candidates': 2 });

  await t.test('starts the server and shows model and device from dg/status', async () => {
    await until('ready in the status bar', 15000, () => rec.statusBar.text.includes('dg: stub · cpu'));
    assert.equal(rec.statusBar.command, 'dg.showLog');
    assert.deepEqual(rec.errors, []);
    for (const id of ['dg.showLog', 'dg.restartServer', 'dg.rewriteSelection']) {
      assert.ok(rec.commands.has(id), id);
    }
  });

  await t.test('a settings change is pushed without a restart; a server setting restarts', async () => {
    const affects = (changed: string) => (s: string) => changed === s || changed.startsWith(s + '.');
    for (const l of rec.configListeners) {
      l({ affectsConfiguration: affects('dg.candidates') });
    }
    await new Promise((r) => setTimeout(r, 300));
    assert.ok(rec.statusBar.text.includes('stub · cpu'), 'still running');
    assert.ok(rec.log.some((l) => /stub: settings .*'candidates': 2/.test(l)), 'the server got the settings');
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

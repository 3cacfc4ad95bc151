import * as assert from 'node:assert/strict';
import { test } from 'node:test';
import { CrashBudget, OneMessage } from '../lifecycle';
import { applyStatus, present, shortModel } from '../status';

test('CrashBudget: N restarts per window, then stay down (no retry storm)', () => {
  const b = new CrashBudget(2, 1000);
  assert.equal(b.crashed(0), true);
  assert.equal(b.crashed(10), true);
  assert.equal(b.crashed(20), false);
  assert.equal(b.crashed(30), false);
  // Old crashes age out of the window.
  assert.equal(b.crashed(5000), true);
});

test('CrashBudget(0): never restart', () => {
  assert.equal(new CrashBudget(0).crashed(0), false);
});

test('OneMessage: one notification per failure episode', () => {
  const m = new OneMessage();
  assert.equal(m.shouldShow(), true);
  assert.equal(m.shouldShow(), false);
  assert.equal(m.shouldShow(), false);
  m.reset();
  assert.equal(m.shouldShow(), true);
});

test('status bar: loading with progress, ready with model and device, error with the log', () => {
  let s = applyStatus({ state: 'starting' }, { state: 'loading', model: 'google/dg-small', device: 'cpu' });
  assert.match(present(s).text, /loading/);
  s = { ...s, percentage: 42 };
  assert.match(present(s).text, /42%/);
  s = applyStatus(s, { state: 'ready', model: 'google/dg-small', device: 'cpu' });
  assert.equal(present(s).text, '$(sparkle) dg: dg-small · cpu');
  assert.equal(s.percentage, undefined);
  s = applyStatus(s, { state: 'error', message: 'no CUDA' });
  const v = present(s);
  assert.equal(v.error, true);
  assert.equal(v.command, 'dg.showLog');
  assert.match(v.tooltip, /no CUDA/);
});

test('shortModel', () => {
  assert.equal(shortModel(undefined), 'model');
  assert.equal(shortModel('/models/dg/'), 'dg');
  assert.equal(shortModel('embedded'), 'embedded');
});

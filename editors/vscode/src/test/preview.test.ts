import * as assert from 'node:assert/strict';
import { test } from 'node:test';
import { NO_APPLY, PreviewGuard, commandArguments, confirmation, isInvalidParams, isWorkspaceEdit, touchedUris } from '../preview';

const URI = 'file:///w/a.py';
const RANGE = { start: { line: 1, character: 0 }, end: { line: 3, character: 0 } };
const EDIT = { changes: { [URI]: [{ range: RANGE, newText: 'x\n' }] } };
const VERSIONED = { documentChanges: [{ textDocument: { uri: URI, version: 4 }, edits: [] }] };

test('commands are asked not to apply while previewing; older servers get three arguments', () => {
  assert.deepEqual(commandArguments(URI, RANGE, 4, true), [URI, RANGE, 4, { apply: false }]);
  assert.deepEqual(commandArguments(URI, RANGE, 4, false), [URI, RANGE, 4]);
  assert.deepEqual(NO_APPLY, { apply: false });
  assert.ok(isInvalidParams({ code: -32602, message: 'takes (uri, range[, version])' }));
  assert.ok(!isInvalidParams({ code: -32603 }) && !isInvalidParams(undefined));
});

test('a command answer is previewed only when it is a WorkspaceEdit', () => {
  assert.ok(isWorkspaceEdit(EDIT) && isWorkspaceEdit(VERSIONED));
  assert.ok(!isWorkspaceEdit(null) && !isWorkspaceEdit({ applied: true }) && !isWorkspaceEdit('x'));
  assert.deepEqual(touchedUris(EDIT), [URI]);
  assert.deepEqual(touchedUris(VERSIONED), [URI]);
});

test('while a document is previewed, a server applying its edit anyway is refused', () => {
  const guard = new PreviewGuard();
  assert.ok(!guard.intercepts({ edit: EDIT }));
  const end = guard.begin(URI);
  assert.ok(guard.intercepts({ edit: EDIT }) && guard.intercepts({ edit: VERSIONED }));
  assert.ok(!guard.intercepts({ edit: { changes: { 'file:///w/other.py': [] } } }), 'other documents apply');
  const end2 = guard.begin(URI);
  end();
  end(); // idempotent
  assert.ok(guard.intercepts({ edit: EDIT }), 'still one preview for it');
  end2();
  assert.ok(!guard.intercepts({ edit: EDIT }));
  assert.equal(PreviewGuard.refusal.applied, false);
});

test('every previewed entry needs confirmation (VS Code opens its Refactor Preview)', () => {
  assert.deepEqual(confirmation('rewrite'), { needsConfirmation: true, label: 'Rewrite block', description: 'DiffusionGemma' });
  assert.equal(confirmation('fix').label, 'Fix block');
});

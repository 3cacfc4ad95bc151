import * as assert from 'node:assert/strict';
import { test } from 'node:test';
import { vscodeClientCapabilities } from './vscodeCapabilities';

test("VS Code's client capabilities come from vscode-languageclient itself", () => {
  const caps = vscodeClientCapabilities() as {
    textDocument: {
      inlineCompletion?: { dynamicRegistration?: boolean };
      codeAction: { resolveSupport?: { properties: string[] }; dataSupport?: boolean };
      completion: { completionItem?: { snippetSupport?: boolean } };
    };
    window: { workDoneProgress?: boolean };
    workspace: { applyEdit?: boolean; configuration?: boolean; didChangeConfiguration?: unknown };
    general: { positionEncodings?: string[] };
  };
  assert.deepEqual(caps.textDocument.inlineCompletion, { dynamicRegistration: true });
  assert.ok(caps.textDocument.codeAction.resolveSupport?.properties.includes('edit'));
  assert.equal(caps.textDocument.codeAction.dataSupport, true);
  assert.equal(caps.textDocument.completion.completionItem?.snippetSupport, true);
  assert.equal(caps.window.workDoneProgress, true);
  assert.equal(caps.workspace.applyEdit, true);
  assert.equal(caps.workspace.configuration, true);
  assert.ok(caps.workspace.didChangeConfiguration);
  assert.deepEqual(caps.general.positionEncodings, ['utf-16']);
});

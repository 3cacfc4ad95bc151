/**
 * The bundle the extension ships (`dist/extension.js`, built by `npm run bundle`; `package.json` `main`) loads against
 * the stand-in `vscode` API and exports activate / deactivate: esbuild resolved every import.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { installFakeVscode } from './fakeVscode';
import { announceSkip } from './lspHarness';

const EXT = path.resolve(__dirname, '..', '..', '..');
const pkg = JSON.parse(fs.readFileSync(path.join(EXT, 'package.json'), 'utf8')) as { main: string };
const bundle = path.join(EXT, pkg.main);
const missing = fs.existsSync(bundle) ? undefined : `${pkg.main} is not built (npm run bundle, or npm test)`;
if (missing) {
  announceSkip('the bundled extension', missing);
}

test('package.json main is the esbuild bundle and it loads', { skip: missing }, () => {
  installFakeVscode({});
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const ext = require(bundle) as { activate?: unknown; deactivate?: unknown };
  assert.equal(typeof ext.activate, 'function');
  assert.equal(typeof ext.deactivate, 'function');
});

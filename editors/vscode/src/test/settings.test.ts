import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import {
  CLIENT_ONLY_KEYS,
  Inspected,
  SERVER_SETTING_KEYS,
  classifyChange,
  didChangeConfigurationParams,
  toServerSettings,
} from '../settings';

const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', '..', 'package.json'), 'utf8')) as {
  contributes: { configuration: { properties: Record<string, { default?: unknown }> } };
};
const contributed = pkg.contributes.configuration.properties;

function inspector(values: Record<string, Inspected>) {
  return (key: string): Inspected | undefined => {
    const def = contributed[`dg.${key}`]?.default;
    return { defaultValue: def, ...(values[key] ?? {}) };
  };
}

test('defaults only: nothing is sent, so the server keeps its own defaults', () => {
  const { settings, warnings } = toServerSettings(inspector({}));
  assert.deepEqual(settings, {});
  assert.deepEqual(warnings, []);
});

test('explicit values map to camelCase server keys, context budget nested', () => {
  const { settings, warnings } = toServerSettings(
    inspector({
      model: { globalValue: '/models/dg-small' },
      device: { workspaceValue: 'cpu', globalValue: 'cuda' },
      'context.maxPromptTokens': { globalValue: 512 },
      'context.suffixShare': { workspaceFolderValue: 0.3 },
      candidates: { globalValue: 3 },
      debounceMs: { globalValue: 0 },
      temperature: { globalValue: 0.2 },
      seed: { globalValue: 7 },
      logLevel: { globalValue: 'debug' },
    }),
  );
  assert.deepEqual(warnings, []);
  assert.deepEqual(settings, {
    model: '/models/dg-small',
    device: 'cpu', // workspace beats user
    context: { maxPromptTokens: 512, suffixShare: 0.3 },
    candidates: 3,
    debounceMs: 0,
    temperature: 0.2,
    seed: 7,
    logLevel: 'debug',
  });
});

test('enable merges across scopes like WorkspaceConfiguration.get', () => {
  const { settings } = toServerSettings(
    inspector({ enable: { globalValue: { markdown: false, python: true }, workspaceValue: { python: false } } }),
  );
  assert.deepEqual(settings, { enable: { markdown: false, python: false } });
});

test('empty model / null model mean the embedded default; null seed is passed through', () => {
  assert.deepEqual(toServerSettings(inspector({ model: { globalValue: '' } })).settings, {});
  assert.deepEqual(toServerSettings(inspector({ model: { globalValue: null } })).settings, {});
  assert.deepEqual(toServerSettings(inspector({ seed: { globalValue: null } })).settings, { seed: null });
  assert.deepEqual(toServerSettings(inspector({ temperature: { globalValue: null } })).settings, { temperature: null });
});

test('wrong types are dropped with a warning naming the setting', () => {
  const { settings, warnings } = toServerSettings(
    inspector({
      candidates: { globalValue: '3' },
      debounceMs: { globalValue: 1.5 },
      enable: { globalValue: { python: 'yes' } },
      maxLineTokens: { globalValue: 32 },
    }),
  );
  assert.deepEqual(settings, { maxLineTokens: 32 });
  assert.equal(warnings.length, 3);
  assert.match(warnings.join('\n'), /dg\.candidates/);
  assert.match(warnings.join('\n'), /dg\.debounceMs/);
  assert.match(warnings.join('\n'), /dg\.enable/);
});

test('didChangeConfiguration wraps the settings in section "dg"', () => {
  assert.deepEqual(didChangeConfigurationParams({ candidates: 2 }), { settings: { dg: { candidates: 2 } } });
});

test('every server setting and client-only setting is contributed in package.json, and nothing else', () => {
  const expected = new Set([
    ...SERVER_SETTING_KEYS.map((k) => `dg.${k}`),
    ...CLIENT_ONLY_KEYS.map((k) => `dg.${k}`),
    'dg.trace.server',
  ]);
  assert.deepEqual(new Set(Object.keys(contributed)), expected);
});

test('classifyChange: server command settings restart, model settings are pushed', () => {
  const affects = (changed: string[]) => (section: string) =>
    changed.some((c) => c === section || c.startsWith(section + '.'));
  assert.equal(classifyChange(affects(['editor.fontSize'])), 'none');
  assert.equal(classifyChange(affects(['dg.server.path'])), 'restart');
  assert.equal(classifyChange(affects(['dg.server.args'])), 'restart');
  assert.equal(classifyChange(affects(['dg.candidates'])), 'push');
  assert.equal(classifyChange(affects(['dg.context.maxPromptTokens'])), 'push');
  assert.equal(classifyChange(affects(['dg.model'])), 'push');
  assert.equal(classifyChange(affects(['dg.trace.server'])), 'none');
});

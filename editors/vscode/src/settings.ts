/**
 * Settings: VS Code's `dg.*` configuration -> the server's settings object (initializationOptions and
 * `workspace/didChangeConfiguration` `{ settings: { dg: ... } }`).
 *
 * Pure: no `vscode` import, so it runs under `node --test`.
 *
 * Only values the user set explicitly (user, workspace or folder scope) are sent; anything left at its
 * contributed default is omitted so the server's own defaults stay the single source of truth.
 */

/**
 * VS Code setting (relative to `dg.`) -> its kind. The dotted name is also the server's camelCase path:
 * `context.maxPromptTokens` is sent as `{ context: { maxPromptTokens } }`, matching `dg_lsp.settings.Settings`.
 */
export const SERVER_SETTINGS = {
  model: 'string',
  device: 'string',
  quantize: 'string',
  enable: 'boolean-map',
  'context.maxPromptTokens': 'integer',
  'context.suffixShare': 'number',
  'context.snippetShare': 'number',
  'context.maxSnippets': 'integer',
  'remote.url': 'string',
  'remote.model': 'string',
  'remote.format': 'string',
  'remote.tokenizer': 'string',
  'remote.timeoutMs': 'integer',
  'remote.fallback': 'boolean',
  maxLineTokens: 'integer',
  maxBlockTokens: 'integer',
  candidates: 'integer',
  debounceMs: 'integer',
  modelWaitMs: 'integer',
  typeAhead: 'boolean',
  thoroughBlocks: 'boolean',
  retryCandidates: 'integer',
  typingBlockTokens: 'integer',
  renoise: 'number',
  decoding: 'string',
  temperature: 'number-or-null',
  seed: 'integer-or-null',
  logLevel: 'string',
} as const;

export type ServerSettingKey = keyof typeof SERVER_SETTINGS;
export const SERVER_SETTING_KEYS = Object.keys(SERVER_SETTINGS) as ServerSettingKey[];

/** Settings that only the extension reads; changing one restarts the server. */
export const CLIENT_ONLY_KEYS = ['server.path', 'server.args', 'server.python', 'server.maxRestarts'] as const;

/** What `WorkspaceConfiguration.inspect(key)` returns (the subset we use). */
export interface Inspected<T = unknown> {
  defaultValue?: T;
  globalValue?: T;
  workspaceValue?: T;
  workspaceFolderValue?: T;
}

export type Inspect = (key: string) => Inspected | undefined;

/** The server's settings object (nested, camelCase), e.g. `{ model: "...", context: { maxPromptTokens: 512 } }`. */
export type ServerSettings = { [key: string]: unknown };

export interface MappedSettings {
  settings: ServerSettings;
  /** Human-readable problems (wrong types); the offending values are dropped. */
  warnings: string[];
}

type Kind = (typeof SERVER_SETTINGS)[ServerSettingKey];

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function explicitValue(i: Inspected | undefined): unknown {
  if (!i) {
    return undefined;
  }
  if (i.workspaceFolderValue !== undefined) {
    return i.workspaceFolderValue;
  }
  if (i.workspaceValue !== undefined) {
    return i.workspaceValue;
  }
  return i.globalValue;
}

/** Object settings merge across scopes the way `WorkspaceConfiguration.get` does (folder wins per key). */
function mergedObject(i: Inspected | undefined): Record<string, unknown> | undefined {
  if (!i) {
    return undefined;
  }
  const layers = [i.globalValue, i.workspaceValue, i.workspaceFolderValue].filter(isPlainObject);
  if (layers.length === 0) {
    return undefined;
  }
  return Object.assign({}, ...layers) as Record<string, unknown>;
}

function check(key: ServerSettingKey, value: unknown): { ok: true; value: unknown } | { ok: false; why: string } {
  const kind: Kind = SERVER_SETTINGS[key];
  switch (kind) {
    case 'string':
      if (typeof value !== 'string') {
        return { ok: false, why: 'expected a string' };
      }
      return { ok: true, value: value.trim() };
    case 'integer':
      if (typeof value !== 'number' || !Number.isInteger(value)) {
        return { ok: false, why: 'expected an integer' };
      }
      return { ok: true, value };
    case 'number':
      if (typeof value !== 'number' || !Number.isFinite(value)) {
        return { ok: false, why: 'expected a number' };
      }
      return { ok: true, value };
    case 'number-or-null':
      if (value === null) {
        return { ok: true, value: null };
      }
      if (typeof value !== 'number' || !Number.isFinite(value)) {
        return { ok: false, why: 'expected a number or null' };
      }
      return { ok: true, value };
    case 'integer-or-null':
      if (value === null) {
        return { ok: true, value: null };
      }
      if (typeof value !== 'number' || !Number.isInteger(value)) {
        return { ok: false, why: 'expected an integer or null' };
      }
      return { ok: true, value };
    case 'boolean':
      if (typeof value !== 'boolean') {
        return { ok: false, why: 'expected true or false' };
      }
      return { ok: true, value };
    case 'boolean-map': {
      if (!isPlainObject(value)) {
        return { ok: false, why: 'expected an object of language id -> boolean' };
      }
      const out: Record<string, boolean> = {};
      for (const [lang, on] of Object.entries(value)) {
        if (typeof on !== 'boolean') {
          return { ok: false, why: `expected a boolean for language "${lang}"` };
        }
        out[lang] = on;
      }
      return { ok: true, value: out };
    }
  }
}

function setPath(target: ServerSettings, dotted: string, value: unknown): void {
  const parts = dotted.split('.');
  let node: Record<string, unknown> = target;
  for (const part of parts.slice(0, -1)) {
    if (!isPlainObject(node[part])) {
      node[part] = {};
    }
    node = node[part] as Record<string, unknown>;
  }
  node[parts[parts.length - 1]] = value;
}

/**
 * Map the `dg` configuration section to the server's settings object.
 *
 * @param inspect `key => vscode.workspace.getConfiguration('dg').inspect(key)`
 */
export function toServerSettings(inspect: Inspect): MappedSettings {
  const settings: ServerSettings = {};
  const warnings: string[] = [];
  for (const key of SERVER_SETTING_KEYS) {
    const inspected = inspect(key);
    const raw = key === 'enable' ? mergedObject(inspected) : explicitValue(inspected);
    if (raw === undefined) {
      continue;
    }
    if (raw === null && !SERVER_SETTINGS[key].endsWith('-or-null')) {
      continue; // e.g. dg.model = null: the server's default
    }
    const checked = check(key, raw);
    if (!checked.ok) {
      warnings.push(`dg.${key}: ${checked.why}, got ${JSON.stringify(raw)}; using the server's default`);
      continue;
    }
    // An empty string means "server default" (e.g. dg.model = "" -> the embedded default model).
    if (checked.value === '') {
      continue;
    }
    setPath(settings, key, checked.value);
  }
  return { settings, warnings };
}

/** `workspace/didChangeConfiguration` params for the server. */
export function didChangeConfigurationParams(settings: ServerSettings): { settings: { dg: ServerSettings } } {
  return { settings: { dg: settings } };
}

/** Whether a configuration change needs a server restart (server command changed) or just a settings push. */
export function classifyChange(affects: (section: string) => boolean): 'none' | 'restart' | 'push' {
  if (!affects('dg')) {
    return 'none';
  }
  if (CLIENT_ONLY_KEYS.some((k) => affects(`dg.${k}`))) {
    return 'restart';
  }
  if (SERVER_SETTING_KEYS.some((k) => affects(`dg.${k}`)) || affects('dg.context') || affects('dg.remote')) {
    return 'push';
  }
  return 'none'; // e.g. dg.trace.server, handled by the language client itself
}

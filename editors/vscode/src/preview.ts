/**
 * "Rewrite block" / "Fix block" are previewed before they apply: the extension gets the WorkspaceEdit without
 * applying it, then hands it to VS Code with every entry marked `needsConfirmation`, which opens VS Code's Refactor
 * Preview (a diff per file, with Apply / Discard). Nothing changes until the user applies it.
 *
 * Getting the edit without applying it:
 * - code action + `codeAction/resolve`: the resolved action carries the edit (the server never applies it);
 * - the `dg.rewriteBlock` / `dg.fixBlock` commands: called as `[uri, range, version, { apply: false }]`, they return
 *   the edit and do not send `workspace/applyEdit`. A server without that fourth argument rejects it with
 *   InvalidParams; the extension then calls it with three and, while waiting, answers that server's
 *   `workspace/applyEdit` for the document with `applied: false` (`PreviewGuard`).
 *
 * Pure: no `vscode` import, so it runs under `node --test`.
 */

export type EditKind = 'rewrite' | 'fix';

export const COMMANDS: Record<EditKind, string> = { rewrite: 'dg.rewriteBlock', fix: 'dg.fixBlock' };
export const TITLES: Record<EditKind, string> = { rewrite: 'Rewrite block', fix: 'Fix block' };

/** The fourth command argument that asks the server to return the edit without applying it. */
export const NO_APPLY = { apply: false } as const;

/** Arguments for the server command: with `NO_APPLY`, or without it (servers that take three). */
export function commandArguments(uri: string, range: unknown, version: number, preview: boolean): unknown[] {
  return preview ? [uri, range, version, NO_APPLY] : [uri, range, version];
}

/** JSON-RPC InvalidParams: the server does not take the arguments as given. */
export function isInvalidParams(e: unknown): boolean {
  return typeof e === 'object' && e !== null && (e as { code?: unknown }).code === -32602;
}

interface ProtocolWorkspaceEdit {
  changes?: { [uri: string]: unknown[] };
  documentChanges?: unknown[];
}

/** The document URIs a protocol WorkspaceEdit touches. */
export function touchedUris(edit: ProtocolWorkspaceEdit | undefined): string[] {
  const out = new Set<string>(Object.keys(edit?.changes ?? {}));
  for (const dc of edit?.documentChanges ?? []) {
    const uri = (dc as { textDocument?: { uri?: unknown } }).textDocument?.uri;
    if (typeof uri === 'string') {
      out.add(uri);
    }
  }
  return [...out];
}

/** Is `result` (a command's answer) a WorkspaceEdit? */
export function isWorkspaceEdit(result: unknown): result is ProtocolWorkspaceEdit {
  if (typeof result !== 'object' || result === null) {
    return false;
  }
  const r = result as ProtocolWorkspaceEdit;
  return (typeof r.changes === 'object' && r.changes !== null) || Array.isArray(r.documentChanges);
}

/** Documents whose edits are being previewed: a server's `workspace/applyEdit` for them is answered "not applied". */
export class PreviewGuard {
  private readonly uris = new Map<string, number>();

  begin(uri: string): () => void {
    this.uris.set(uri, (this.uris.get(uri) ?? 0) + 1);
    let ended = false;
    return () => {
      if (ended) {
        return;
      }
      ended = true;
      const n = (this.uris.get(uri) ?? 1) - 1;
      if (n <= 0) {
        this.uris.delete(uri);
      } else {
        this.uris.set(uri, n);
      }
    };
  }

  /** Should this `workspace/applyEdit` be answered `{ applied: false }`? */
  intercepts(params: { edit?: ProtocolWorkspaceEdit }): boolean {
    return touchedUris(params.edit).some((u) => this.uris.has(u));
  }

  static readonly refusal = {
    applied: false,
    failureReason: 'dg-lsp: the edit is being previewed; it applies when the user accepts it',
  };
}

/** Metadata that makes VS Code show an entry in its Refactor Preview instead of applying it at once. */
export function confirmation(kind: EditKind): { needsConfirmation: true; label: string; description: string } {
  return { needsConfirmation: true, label: TITLES[kind], description: 'DiffusionGemma' };
}

/**
 * Status-bar presentation of the server state. Pure, so it runs under `node --test`.
 */

/** Payload of the server's `dg/status` notification. */
export interface DgStatusParams {
  state: 'loading' | 'ready' | 'error';
  model?: string;
  device?: string;
  message?: string;
}

export type ClientState = 'starting' | 'loading' | 'ready' | 'error' | 'stopped';

export interface StatusModel {
  state: ClientState;
  model?: string;
  device?: string;
  message?: string;
  /** 0..100 from `$/progress` while loading. */
  percentage?: number;
  progressMessage?: string;
}

export interface StatusView {
  text: string;
  tooltip: string;
  /** Command run on click. */
  command: string;
  error: boolean;
}

/** The last path component of a model id or directory: `google/foo-2b` -> `foo-2b`. */
export function shortModel(model: string | undefined): string {
  if (!model) {
    return 'model';
  }
  const trimmed = model.replace(/[\\/]+$/, '');
  const parts = trimmed.split(/[\\/]/);
  return parts[parts.length - 1] || trimmed;
}

export function applyStatus(prev: StatusModel, params: DgStatusParams): StatusModel {
  const state: ClientState = params.state === 'ready' || params.state === 'error' ? params.state : 'loading';
  return {
    state,
    model: params.model ?? prev.model,
    device: params.device ?? prev.device,
    message: params.message,
    percentage: state === 'loading' ? prev.percentage : undefined,
    progressMessage: state === 'loading' ? prev.progressMessage : undefined,
  };
}

export function present(s: StatusModel): StatusView {
  const model = shortModel(s.model);
  switch (s.state) {
    case 'starting':
      return { text: '$(loading~spin) dg', tooltip: 'dg-lsp: starting the server…', command: 'dg.showLog', error: false };
    case 'loading': {
      const pct = s.percentage !== undefined ? ` ${Math.round(s.percentage)}%` : '';
      const detail = s.progressMessage ?? s.message;
      return {
        text: `$(loading~spin) dg: loading${pct}`,
        tooltip: `dg-lsp: loading ${s.model ?? 'the model'}${s.device ? ` on ${s.device}` : ''}${detail ? ` — ${detail}` : ''}`,
        command: 'dg.showLog',
        error: false,
      };
    }
    case 'ready':
      return {
        text: `$(sparkle) dg: ${model}${s.device ? ` · ${s.device}` : ''}`,
        tooltip: `dg-lsp ready: ${s.model ?? 'model'}${s.device ? ` on ${s.device}` : ''}. Click to show the log.`,
        command: 'dg.showLog',
        error: false,
      };
    case 'error':
      return {
        text: '$(error) dg',
        tooltip: `dg-lsp error: ${(s.message ?? 'see the log').replace(/\.$/, '')}. Click to show the log.`,
        command: 'dg.showLog',
        error: true,
      };
    case 'stopped':
      return { text: '$(circle-slash) dg', tooltip: 'dg-lsp is not running. Click to show the log.', command: 'dg.showLog', error: true };
  }
}

/**
 * DiffusionGemma (dg-lsp) for VS Code: starts `dg-lsp --stdio`, lets vscode-languageclient wire inline
 * completion (ghost text), completion and code actions, and adds a status bar item, an output channel, the
 * "DiffusionGemma: Rewrite block" / "Fix block" commands (previewed in VS Code's Refactor Preview before they apply,
 * see preview.ts) and a capped restart policy with one clear error message.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as vscode from 'vscode';
import {
  CancellationToken,
  CloseAction,
  CodeAction,
  CodeActionKind,
  CodeActionRequest,
  CodeActionResolveRequest,
  CodeActionTriggerKind,
  Command,
  DidChangeConfigurationNotification,
  ErrorAction,
  ErrorHandler,
  ExecuteCommandRequest,
  LanguageClient,
  LanguageClientOptions,
  RevealOutputChannelOn,
  ServerOptions,
  State,
  WorkspaceEdit,
  WorkDoneProgress,
  WorkDoneProgressCreateRequest,
} from 'vscode-languageclient/node';
import { CrashBudget, OneMessage } from './lifecycle';
import { ServerCommand, ServerNotFoundError, resolveServerCommand } from './serverCommand';
import {
  COMMANDS,
  EditKind,
  PreviewGuard,
  TITLES,
  commandArguments,
  confirmation,
  isInvalidParams,
  isWorkspaceEdit,
} from './preview';
import { didChangeConfigurationParams, classifyChange, toServerSettings, ServerSettings } from './settings';
import { DgStatusParams, StatusModel, applyStatus, present } from './status';

const CLIENT_ID = 'dg'; // so vscode-languageclient reads `dg.trace.server`
const CLIENT_NAME = 'DiffusionGemma';

/** Never let the library pop up its own notifications: the controller shows exactly one. */
class DgLanguageClient extends LanguageClient {
  public override error(message: string, data?: unknown, _showNotification?: boolean | 'force'): void {
    super.error(message, data, false);
  }
  public override warn(message: string, data?: unknown, _showNotification?: boolean): void {
    super.warn(message, data, false);
  }
  public override info(message: string, data?: unknown, _showNotification?: boolean): void {
    super.info(message, data, false);
  }
}

function isExecutable(p: string): boolean {
  try {
    if (!fs.statSync(p).isFile()) {
      return false;
    }
    if (process.platform !== 'win32') {
      fs.accessSync(p, fs.constants.X_OK);
    }
    return true;
  } catch {
    return false;
  }
}

function currentServerSettings(output: vscode.LogOutputChannel, scope?: vscode.Uri): ServerSettings {
  const cfg = vscode.workspace.getConfiguration('dg', scope);
  const { settings, warnings } = toServerSettings((key) => cfg.inspect(key));
  for (const w of warnings) {
    output.warn(w);
  }
  return settings;
}

async function activePythonInterpreter(): Promise<string | undefined> {
  const ext = vscode.extensions.getExtension('ms-python.python');
  if (!ext) {
    return undefined;
  }
  try {
    const api = (ext.isActive ? ext.exports : await ext.activate()) as {
      environments?: { getActiveEnvironmentPath?: () => { path?: string } | undefined };
    };
    return api?.environments?.getActiveEnvironmentPath?.()?.path;
  } catch {
    return undefined;
  }
}

class Controller implements vscode.Disposable {
  client: DgLanguageClient | undefined;
  private readonly status: vscode.StatusBarItem;
  private model: StatusModel = { state: 'stopped' };
  private readonly oneMessage = new OneMessage();
  private budget = new CrashBudget(2);
  readonly previews = new PreviewGuard();
  private readonly disposables: vscode.Disposable[] = [];

  constructor(readonly output: vscode.LogOutputChannel) {
    this.status = vscode.window.createStatusBarItem('dg.status', vscode.StatusBarAlignment.Right, 100);
    this.status.name = 'DiffusionGemma';
    this.render();
    this.status.show();
  }

  private render(): void {
    const view = present(this.model);
    this.status.text = view.text;
    this.status.tooltip = view.tooltip;
    this.status.command = view.command;
    this.status.backgroundColor = view.error ? new vscode.ThemeColor('statusBarItem.errorBackground') : undefined;
  }

  private setModel(m: StatusModel): void {
    this.model = m;
    this.render();
  }

  /** The one user-facing failure message (per episode), with the log one click away. */
  fail(message: string): void {
    this.output.error(message);
    this.setModel({ ...this.model, state: 'error', message });
    if (!this.oneMessage.shouldShow()) {
      return;
    }
    void vscode.window.showErrorMessage(`DiffusionGemma: ${message}`, 'Show log', 'Open settings').then((pick) => {
      if (pick === 'Show log') {
        this.output.show(true);
      } else if (pick === 'Open settings') {
        void vscode.commands.executeCommand('workbench.action.openSettings', 'dg.server');
      }
    });
  }

  private errorHandler(): ErrorHandler {
    return {
      error: (_error, _message, count) => {
        if (count !== undefined && count > 3) {
          this.fail('the connection to dg-lsp keeps failing; the server was shut down.');
          return { action: ErrorAction.Shutdown, handled: true };
        }
        return { action: ErrorAction.Continue, handled: true };
      },
      closed: () => {
        if (this.budget.crashed(Date.now())) {
          this.output.warn(
            `dg-lsp exited unexpectedly; restarting (${this.budget.recent}/${this.budget.maxRestarts} in 3 minutes).`,
          );
          this.setModel({ state: 'starting' });
          return { action: CloseAction.Restart, handled: true };
        }
        this.fail(
          `dg-lsp stopped ${this.budget.recent} times in 3 minutes and will not be restarted. ` +
            'Check the log, then run "DiffusionGemma: Restart server".',
        );
        return { action: CloseAction.DoNotRestart, handled: true };
      },
    };
  }

  private async resolveCommand(): Promise<ServerCommand> {
    const cfg = vscode.workspace.getConfiguration('dg');
    const serverPath = cfg.get<string>('server.path', '');
    const python = cfg.get<string>('server.python', '');
    return resolveServerCommand({
      serverPath,
      serverArgs: cfg.get<string[]>('server.args', ['--stdio']),
      python,
      activePython: serverPath || python ? undefined : await activePythonInterpreter(),
      workspaceFolders: (vscode.workspace.workspaceFolders ?? []).map((f) => f.uri.fsPath),
      env: process.env,
      platform: process.platform,
      homeDir: os.homedir(),
      isExecutable,
    });
  }

  async start(): Promise<void> {
    const cfg = vscode.workspace.getConfiguration('dg');
    this.budget = new CrashBudget(cfg.get<number>('server.maxRestarts', 2));
    this.setModel({ state: 'starting' });
    let cmd: ServerCommand;
    try {
      cmd = await this.resolveCommand();
    } catch (e) {
      if (e instanceof ServerNotFoundError) {
        this.output.error(`Looked in: ${e.searched.join(', ')}`);
        this.fail(e.message);
        return;
      }
      throw e;
    }
    this.output.info(`Starting ${cmd.command} ${cmd.args.join(' ')} (found via ${cmd.source})`);

    const serverOptions: ServerOptions = { command: cmd.command, args: cmd.args, options: { env: process.env } };
    const clientOptions: LanguageClientOptions = {
      documentSelector: [{ scheme: 'file' }, { scheme: 'untitled' }],
      outputChannel: this.output,
      revealOutputChannelOn: RevealOutputChannelOn.Never,
      initializationOptions: () => currentServerSettings(this.output),
      errorHandler: this.errorHandler(),
      middleware: {
        // An answer for a document that changed while it was computed is dropped (VS Code would re-ask anyway).
        provideInlineCompletionItems: async (document, position, context, token, next) => {
          const version = document.version;
          const result = await next(document, position, context, token);
          return token.isCancellationRequested || document.version !== version ? [] : result;
        },
        workspace: {
          // While an edit is previewed, a server that applies it anyway (no `{ apply: false }` support) is refused.
          handleApplyEdit: (params, next) =>
            this.previews.intercepts(params) ? PreviewGuard.refusal : next(params, CancellationToken.None),
          // If the server pulls settings (workspace/configuration), answer with the mapped `dg` section.
          configuration: async (params, token, next) => {
            const result = await next(params, token);
            if (!Array.isArray(result)) {
              return result;
            }
            return params.items.map((item, i) =>
              item.section === 'dg'
                ? currentServerSettings(this.output, item.scopeUri ? vscode.Uri.parse(item.scopeUri) : undefined)
                : result[i],
            );
          },
        },
      },
    };

    const client = new DgLanguageClient(CLIENT_ID, CLIENT_NAME, serverOptions, clientOptions);
    this.client = client;
    client.onNotification('dg/status', (params: DgStatusParams) => this.onDgStatus(params));
    this.disposables.push(
      client.onDidChangeState((e) => {
        if (e.newState === State.Stopped && this.model.state !== 'error') {
          this.setModel({ ...this.model, state: 'stopped' });
        }
      }),
    );
    try {
      await client.start();
    } catch (e) {
      this.fail(`dg-lsp failed to start (${cmd.command}): ${e instanceof Error ? e.message : String(e)}`);
      return;
    }
    // Replace the library's progress UI so the status bar can show the loading percentage too.
    client.onRequest(WorkDoneProgressCreateRequest.type, (params) => {
      this.trackProgress(client, params.token);
    });
    if (this.model.state === 'starting') {
      this.setModel({ ...this.model, state: 'loading' });
    }
  }

  private trackProgress(client: LanguageClient, token: string | number): void {
    void vscode.window.withProgress(
      { location: vscode.ProgressLocation.Window, title: 'DiffusionGemma' },
      (progress) =>
        new Promise<void>((resolve) => {
          const sub = client.onProgress(WorkDoneProgress.type, token, (value) => {
            if (value.kind === 'begin' || value.kind === 'report') {
              const message = value.message ?? (value.kind === 'begin' ? value.title : undefined);
              progress.report({ message });
              if (this.model.state === 'loading' || this.model.state === 'starting') {
                this.setModel({
                  ...this.model,
                  state: 'loading',
                  percentage: value.percentage ?? this.model.percentage,
                  progressMessage: message ?? this.model.progressMessage,
                });
              }
            } else {
              sub.dispose();
              resolve();
            }
          });
        }),
    );
  }

  private onDgStatus(params: DgStatusParams): void {
    const next = applyStatus(this.model, params);
    if (params.state === 'error') {
      this.fail(params.message || `could not load ${params.model ?? 'the model'}`);
      this.setModel(next);
      return;
    }
    if (params.state === 'ready') {
      this.oneMessage.reset();
      this.output.info(`Ready: ${params.model ?? 'model'} on ${params.device ?? 'unknown device'}`);
    }
    this.setModel(next);
  }

  async pushSettings(): Promise<void> {
    const client = this.client;
    if (!client || !client.isRunning()) {
      return;
    }
    await client.sendNotification(
      DidChangeConfigurationNotification.type,
      didChangeConfigurationParams(currentServerSettings(this.output)),
    );
  }

  async stop(): Promise<void> {
    const client = this.client;
    this.client = undefined;
    if (client) {
      try {
        await client.stop(5000);
      } catch (e) {
        this.output.warn(`Stopping dg-lsp: ${e instanceof Error ? e.message : String(e)}`);
      }
    }
    this.setModel({ state: 'stopped' });
  }

  async restart(): Promise<void> {
    this.oneMessage.reset();
    await this.stop();
    await this.start();
  }

  dispose(): void {
    this.status.dispose();
    for (const d of this.disposables) {
      d.dispose();
    }
  }
}

/** The server's command for `kind`, asked not to apply its edit; falls back to three arguments for older servers. */
async function commandEdit(
  client: LanguageClient,
  guard: PreviewGuard,
  kind: EditKind,
  command: string,
  uri: string,
  range: unknown,
  version: number,
  token: vscode.CancellationToken,
): Promise<unknown> {
  const send = (preview: boolean) =>
    client.sendRequest(ExecuteCommandRequest.type, { command, arguments: commandArguments(uri, range, version, preview) }, token);
  const done = guard.begin(uri);
  try {
    try {
      return await send(true);
    } catch (e) {
      if (!isInvalidParams(e)) {
        throw e;
      }
      return await send(false); // its workspace/applyEdit is refused by the guard while we wait
    }
  } finally {
    done();
  }
}

/**
 * "Rewrite block" / "Fix block" on the selection: get the server's WorkspaceEdit without applying it, then let the
 * user review it in VS Code's Refactor Preview (every entry needs confirmation) and apply or discard it there.
 */
async function editSelection(controller: Controller, kind: EditKind): Promise<void> {
  const title = TITLES[kind];
  const editor = vscode.window.activeTextEditor;
  if (!editor || editor.selection.isEmpty) {
    void vscode.window.showInformationMessage(`DiffusionGemma: select the lines to ${kind} first.`);
    return;
  }
  const client = controller.client;
  if (!client || !client.isRunning()) {
    const pick = await vscode.window.showWarningMessage('DiffusionGemma: dg-lsp is not running.', 'Show log');
    if (pick) {
      controller.output.show(true);
    }
    return;
  }
  const doc = editor.document;
  const version = doc.version;
  const c2p = client.code2ProtocolConverter;
  const uri = c2p.asUri(doc.uri);
  const range = c2p.asRange(editor.selection);
  const commands = client.initializeResult?.capabilities.executeCommandProvider?.commands ?? [];
  if (kind === 'fix' && !commands.includes(COMMANDS.fix)) {
    void vscode.window.showInformationMessage(`DiffusionGemma: this dg-lsp has no ${COMMANDS.fix} command; update it.`);
    return;
  }
  const edit = await vscode.window.withProgress(
    { location: vscode.ProgressLocation.Notification, title: `DiffusionGemma: ${title.toLowerCase()}…`, cancellable: true },
    async (_progress, token): Promise<unknown> => {
      try {
        if (kind === 'fix') {
          return await commandEdit(client, controller.previews, kind, COMMANDS.fix, uri, range, version, token);
        }
        const actions =
          (await client.sendRequest(
            CodeActionRequest.type,
            {
              textDocument: { uri },
              range,
              context: { diagnostics: [], only: [CodeActionKind.RefactorRewrite], triggerKind: CodeActionTriggerKind.Invoked },
            },
            token,
          )) ?? [];
        let action = actions.find(
          (a): a is CodeAction => !Command.is(a) && (a.kind ?? '').startsWith(CodeActionKind.RefactorRewrite),
        );
        if (token.isCancellationRequested) {
          return undefined;
        }
        if (action && !action.edit && !action.command) {
          action = await client.sendRequest(CodeActionResolveRequest.type, action, token);
        }
        if (action?.edit) {
          return action.edit;
        }
        // Servers that only expose the command, or clients the server gave a command instead of a lazy edit.
        const command = action?.command?.command ?? COMMANDS.rewrite;
        return await commandEdit(client, controller.previews, kind, command, uri, range, version, token);
      } catch (e) {
        if (token.isCancellationRequested) {
          return undefined;
        }
        controller.output.error(`${title} failed: ${e instanceof Error ? e.message : String(e)}`);
        const pick = await vscode.window.showWarningMessage(`DiffusionGemma: ${title.toLowerCase()} failed.`, 'Show log');
        if (pick) {
          controller.output.show(true);
        }
        return undefined;
      }
    },
  );
  if (edit === undefined) {
    return;
  }
  if (!isWorkspaceEdit(edit)) {
    void vscode.window.showInformationMessage(`DiffusionGemma: no ${kind} for this block.`);
    return;
  }
  if (doc.version !== version) {
    void vscode.window.showWarningMessage(`DiffusionGemma: the document changed during the ${kind}; nothing applied.`);
    return;
  }
  // Same edits, each marked as needing confirmation: VS Code shows them in its Refactor Preview (Apply / Discard).
  const converted = await client.protocol2CodeConverter.asWorkspaceEdit(edit as WorkspaceEdit);
  const previewed = new vscode.WorkspaceEdit();
  for (const [target, edits] of converted.entries()) {
    for (const e of edits) {
      previewed.replace(target, e.range, e.newText, confirmation(kind));
    }
  }
  const applied = await vscode.workspace.applyEdit(previewed, { isRefactoring: true });
  if (!applied) {
    controller.output.info(`${title}: not applied (discarded in the preview, or the document changed).`);
  }
}

let controller: Controller | undefined;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  const output = vscode.window.createOutputChannel(CLIENT_NAME, { log: true });
  controller = new Controller(output);
  const c = controller;
  context.subscriptions.push(
    output,
    c,
    vscode.commands.registerCommand('dg.showLog', () => output.show(true)),
    vscode.commands.registerCommand('dg.restartServer', () => c.restart()),
    vscode.commands.registerCommand('dg.rewriteSelection', () => editSelection(c, 'rewrite')),
    vscode.commands.registerCommand('dg.fixSelection', () => editSelection(c, 'fix')),
    vscode.workspace.onDidChangeConfiguration((e) => {
      const kind = classifyChange((section) => e.affectsConfiguration(section));
      if (kind === 'restart') {
        output.info('Server settings changed; restarting dg-lsp.');
        void c.restart();
      } else if (kind === 'push') {
        void c.pushSettings();
      }
    }),
  );
  await c.start();
}

export async function deactivate(): Promise<void> {
  if (controller) {
    await controller.stop();
    controller = undefined;
  }
}

-- dg_lsp: Neovim (0.11+) client for dg-lsp — multi-line ghost text, LSP completion and :DgRewrite.
--
--   require('dg_lsp').setup({
--     settings = { candidates = 2, enable = { markdown = false } },  -- dg-lsp settings (camelCase)
--   })
local util = require('dg_lsp.util')
local api = vim.api

local M = {}

local NAME = util.client_name
local LAUNCHER = 'import sys; from dg_lsp.cli import main; sys.exit(main())'

M.defaults = {
  -- Server command. nil: `dg-lsp` next to `python`, in $VIRTUAL_ENV, ./.venv, or on PATH.
  cmd = nil,
  args = { '--stdio' },
  python = nil, -- an interpreter whose environment has dg-lsp installed
  cmd_env = nil,
  filetypes = nil, -- nil: every filetype (the server's `enable` setting decides per language)
  root_markers = { '.git', 'pyproject.toml', 'package.json', 'Cargo.toml', 'go.mod' },
  -- dg-lsp settings (camelCase, as in `dg` section): sent as initializationOptions and settings.dg.
  settings = {},
  -- Ghost text: 'auto' (native on 0.12+, else the plugin's), 'native', 'plugin', or false.
  ghost = 'auto',
  debounce_ms = 75, -- wait after a keystroke before asking, both backends (the native one's own is 200 ms)
  -- LSP completion menu (vim.lsp.completion); autotrigger on the server's trigger characters.
  completion = { enable = true, autotrigger = false },
  -- Insert-mode keys; false disables one. <Tab> is not taken unless you set it here. With nothing shown a key
  -- does nothing, unless keys_fallback is true: then it types itself (its insert-mode meaning, not remapped).
  keys_fallback = false,
  keys = {
    accept = '<M-l>',
    accept_line = '<M-j>',
    accept_word = '<M-w>',
    dismiss = '<C-]>',
    next = '<M-]>',
    prev = '<M-[>',
    trigger = '<M-\\>',
  },
  -- A crashing server is restarted at most this often per 3 minutes, then left off with one message.
  max_restarts = 2,
  -- :DgRewrite / :DgFix show the edit as a diff to apply (a, <CR>) or reject (r, q, <Esc>); false: apply at once.
  preview = true,
}

M.opts = nil
M._status = {} ---@type table<integer, table>
M._cmd = nil
M._cmd_error = nil

local notified = {}
local function notify_once(key, msg, level)
  if notified[key] then
    return
  end
  notified[key] = true
  vim.schedule(function()
    vim.notify('dg_lsp: ' .. msg, level or vim.log.levels.ERROR)
  end)
end

--- The settings as a JSON object: an empty Lua table would go out as `[]`, which the server rejects as invalid.
local function as_object(t)
  return (t == nil or next(t) == nil) and vim.empty_dict() or t
end

local function log_path()
  local ok, path = pcall(vim.lsp.log.get_filename)
  return ok and path or 'the LSP log'
end

local function is_exe(path)
  return path and path ~= '' and vim.fn.executable(path) == 1
end

local function script_in(dir)
  if not dir or dir == '' then
    return nil
  end
  for _, rel in ipairs({ 'dg-lsp', 'dg-lsp.exe', 'Scripts/dg-lsp.exe' }) do
    local p = vim.fs.joinpath(dir, rel)
    if is_exe(p) then
      return p
    end
  end
  return nil
end

--- The server command from the options, or nil and why not.
---@return string[]?, string?
function M.resolve_cmd(opts)
  opts = opts or M.opts or M.defaults
  local args = opts.args or { '--stdio' }
  if opts.cmd then
    local cmd = type(opts.cmd) == 'string' and { opts.cmd, unpack(args) } or vim.deepcopy(opts.cmd)
    if type(cmd[1]) == 'string' and not is_exe(vim.fn.expand(cmd[1])) then
      return nil, ('cmd %q is not executable'):format(cmd[1])
    end
    cmd[1] = vim.fn.expand(cmd[1])
    return cmd
  end
  if opts.python then
    local python = vim.fn.exepath(vim.fn.expand(opts.python))
    if python == '' then
      return nil, ('python %q was not found'):format(opts.python)
    end
    local script = script_in(vim.fs.dirname(python))
    if script then
      return { script, unpack(args) }
    end
    return { python, '-c', LAUNCHER, unpack(args) }
  end
  local candidates = {}
  if vim.env.VIRTUAL_ENV then
    candidates[#candidates + 1] = vim.fs.joinpath(vim.env.VIRTUAL_ENV, 'bin')
  end
  candidates[#candidates + 1] = vim.fs.joinpath(vim.fn.getcwd(), '.venv', 'bin')
  for _, dir in ipairs(candidates) do
    local s = script_in(dir)
    if s then
      return { s, unpack(args) }
    end
  end
  local onpath = vim.fn.exepath('dg-lsp')
  if onpath ~= '' then
    return { onpath, unpack(args) }
  end
  return nil,
    'dg-lsp was not found ($VIRTUAL_ENV, ./.venv, PATH). Install it with `pip install dg-lsp`, then pass '
      .. '`python = "/path/to/venv/bin/python"` or `cmd = { "/path/to/dg-lsp", "--stdio" }` to setup().'
end

-- ---------------------------------------------------------------------------------------------------------
-- status

local function on_status(_, result, ctx)
  if type(result) ~= 'table' then
    return
  end
  M._status[ctx.client_id] = result
  if result.state == 'error' then
    notify_once(
      'status-error-' .. ctx.client_id,
      ('%s (model %s). Log: %s'):format(result.message or 'the model failed to load', result.model or '?', log_path())
    )
  elseif result.state == 'ready' then
    notified['status-error-' .. ctx.client_id] = nil
  end
  pcall(api.nvim_exec_autocmds, 'User', { pattern = 'DgStatus', modeline = false, data = result })
  pcall(vim.cmd.redrawstatus)
  if result.state == 'ready' then
    -- Whatever was asked while the model loaded got no suggestion: ask again, at once, where the user is typing.
    local bufnr = api.nvim_get_current_buf()
    local client = util.client(bufnr)
    if client and client.id == ctx.client_id and api.nvim_get_mode().mode:match('^i') then
      require('dg_lsp.ghost').refresh(bufnr)
    end
  end
end

--- State of dg-lsp for a buffer: attached, state ('starting'|'loading'|'ready'|'error'), model, device, ghost.
function M.status(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and api.nvim_get_current_buf() or bufnr
  local client = util.client(bufnr)
  if not client then
    return { attached = false, state = M._cmd_error and 'error' or 'stopped', message = M._cmd_error }
  end
  local s = M._status[client.id] or {}
  return {
    attached = true,
    client_id = client.id,
    state = s.state or 'starting',
    model = s.model,
    device = s.device,
    message = s.message,
    ghost = require('dg_lsp.ghost').mode(bufnr),
  }
end

--- A short string for 'statusline': "dg: loading", "dg: <model> · cpu", "dg: error".
function M.statusline(bufnr)
  local s = M.status(bufnr)
  if not s.attached then
    return s.state == 'error' and 'dg: error' or ''
  end
  if s.state == 'ready' then
    local model = (s.model or 'model'):gsub('[/\\]+$', ''):match('([^/\\]+)$') or 'model'
    return ('dg: %s%s'):format(model, s.device and (' · ' .. s.device) or '')
  end
  return 'dg: ' .. s.state
end

-- ---------------------------------------------------------------------------------------------------------
-- crash cap

local crashes = {}
local stopping = false

local function on_exit(code, signal, client_id)
  M._status[client_id] = nil
  if stopping or (code == 0 and (signal == 0 or signal == nil)) then
    return
  end
  vim.schedule(function()
    local now = vim.uv.now()
    local recent = {}
    for _, t in ipairs(crashes) do
      if now - t < 180000 then
        recent[#recent + 1] = t
      end
    end
    recent[#recent + 1] = now
    crashes = recent
    local max = (M.opts and M.opts.max_restarts) or M.defaults.max_restarts
    if #crashes <= max then
      vim.lsp.log.warn(('dg_lsp: dg-lsp exited (code %s, signal %s); restarting'):format(code, signal))
      vim.lsp.enable(NAME, false)
      vim.lsp.enable(NAME, true)
    else
      vim.lsp.enable(NAME, false)
      notify_once(
        'crash',
        ('dg-lsp exited (code %s) %d times in 3 minutes and was not restarted. See :checkhealth dg_lsp and %s; '
          .. ':DgRestart once fixed.'):format(code, #crashes, log_path())
      )
    end
  end)
end

-- ---------------------------------------------------------------------------------------------------------
-- attach

--- Neovim's LSP completion inserts only the first word of a plain-text item's textEdit (completion "words" are
--- words); dg-lsp items are whole lines or blocks, so on accept put in the full edit.
local function complete_done(client, bufnr)
  if vim.v.event and vim.v.event.reason and vim.v.event.reason ~= 'accept' then
    return
  end
  local done = vim.v.completed_item
  local lsp_data = type(done) == 'table' and vim.tbl_get(done, 'user_data', 'nvim', 'lsp') or nil
  if not lsp_data or lsp_data.client_id ~= client.id then
    return
  end
  local item = lsp_data.completion_item
  if not item or not item.textEdit or item.insertTextFormat == 2 or item.additionalTextEdits then
    return
  end
  local word = done.word or ''
  local edit = item.textEdit
  local new_text = (edit.newText or ''):gsub('\r\n', '\n')
  if new_text == word then
    return
  end
  local row, col = unpack(api.nvim_win_get_cursor(0))
  row = row - 1
  local line = util.get_line(bufnr, row)
  if col < #word or line:sub(col - #word + 1, col) ~= word then
    return
  end
  -- Back to the document the server saw, then its edit (which may also replace the rest of the line).
  api.nvim_buf_set_text(bufnr, row, col - #word, row, col, { '' })
  local range = edit.range or edit.replace
  local sr, sc, er, ec = util.range_to_bytes(bufnr, range, client.offset_encoding or 'utf-16')
  util.set_text(bufnr, sr, sc, er, ec, new_text)
end

local function on_attach(client, bufnr)
  local opts = M.opts
  if opts.completion and opts.completion.enable and vim.lsp.completion then
    vim.lsp.completion.enable(true, client.id, bufnr, { autotrigger = opts.completion.autotrigger })
    api.nvim_create_autocmd('CompleteDone', {
      group = api.nvim_create_augroup('dg_lsp.complete.' .. bufnr, { clear = true }),
      buffer = bufnr,
      callback = function()
        complete_done(client, bufnr)
      end,
    })
  end
  if opts.ghost then
    local ghost = require('dg_lsp.ghost')
    ghost.debounce_ms = opts.debounce_ms
    local mode = opts.ghost
    if mode == 'auto' or mode == true then
      mode = ghost.native_available() and 'native' or 'plugin'
    end
    ghost.attach(bufnr, client, mode)
    ghost.set_keys(bufnr, opts.keys or {}, opts.keys_fallback)
  end
end

--- Merge `settings` (camelCase) into the running servers' settings and notify them.
function M.update_settings(settings)
  M.opts = M.opts or vim.deepcopy(M.defaults)
  M.opts.settings = vim.tbl_deep_extend('force', M.opts.settings or {}, settings or {})
  if settings and settings.enable then
    M.opts.settings.enable = vim.tbl_extend('force', M.opts.settings.enable or {}, settings.enable)
  end
  vim.lsp.config(NAME, { settings = { dg = as_object(M.opts.settings) }, init_options = as_object(M.opts.settings) })
  for _, client in ipairs(vim.lsp.get_clients({ name = NAME })) do
    client.settings = { dg = as_object(vim.deepcopy(M.opts.settings)) }
    client:notify('workspace/didChangeConfiguration', { settings = client.settings })
  end
end

function M.rewrite(bufnr, line1, line2, on_done, opts)
  return require('dg_lsp.rewrite').rewrite(bufnr, line1, line2, on_done, opts)
end

function M.fix(bufnr, line1, line2, on_done, opts)
  return require('dg_lsp.rewrite').fix(bufnr, line1, line2, on_done, opts)
end

local function create_commands()
  api.nvim_create_user_command('DgRewrite', function(a)
    M.rewrite(0, a.line1, a.line2)
  end, { range = true, desc = 'dg_lsp: rewrite the selected lines' })
  api.nvim_create_user_command('DgFix', function(a)
    M.fix(0, a.line1, a.line2)
  end, { range = true, desc = 'dg_lsp: fix the selected lines' })
  api.nvim_create_user_command('DgRestart', function()
    crashes = {}
    notified = {}
    if not M._cmd then
      M.setup(M.opts)
      return
    end
    vim.lsp.enable(NAME, false)
    vim.lsp.enable(NAME, true)
  end, { desc = 'dg_lsp: restart dg-lsp' })
  api.nvim_create_user_command('DgStatus', function()
    local s = M.status(0)
    vim.notify(('dg_lsp: %s%s'):format(M.statusline(0) ~= '' and M.statusline(0) or s.state, s.message and (' — ' .. s.message) or ''))
  end, { desc = 'dg_lsp: show the server state' })
end

function M.setup(opts)
  M.opts = vim.tbl_deep_extend('force', vim.deepcopy(M.defaults), opts or {})
  if opts and opts.keys then
    -- `false` disables a key; keep it rather than letting deep_extend drop it.
    for k, v in pairs(opts.keys) do
      M.opts.keys[k] = v
    end
  end
  create_commands()
  require('dg_lsp.rewrite').preview = M.opts.preview ~= false
  if vim.fn.has('nvim-0.11') == 0 then
    M._cmd_error = 'Neovim 0.11 or newer is required'
    notify_once('version', M._cmd_error)
    return false
  end
  local cmd, why = M.resolve_cmd(M.opts)
  M._cmd, M._cmd_error = cmd, why
  if not cmd then
    notify_once('cmd', why .. ' (:checkhealth dg_lsp)')
    return false
  end
  vim.lsp.config(NAME, {
    cmd = cmd,
    cmd_env = M.opts.cmd_env,
    filetypes = M.opts.filetypes,
    root_markers = M.opts.root_markers,
    init_options = as_object(M.opts.settings),
    settings = { dg = as_object(M.opts.settings) },
    handlers = {
      ['dg/status'] = on_status,
      -- While :DgRewrite / :DgFix preview an edit, a server that applies it anyway is told applied = false.
      ['workspace/applyEdit'] = function(...)
        return require('dg_lsp.rewrite').intercept_apply_edit(...)
      end,
    },
    on_exit = on_exit,
  })
  local group = api.nvim_create_augroup('dg_lsp.attach', { clear = true })
  api.nvim_create_autocmd('LspAttach', {
    group = group,
    callback = function(args)
      local client = vim.lsp.get_client_by_id(args.data.client_id)
      if client and client.name == NAME then
        on_attach(client, args.buf)
      end
    end,
  })
  api.nvim_create_autocmd('VimLeavePre', {
    group = group,
    callback = function()
      stopping = true
    end,
  })
  vim.lsp.enable(NAME)
  return true
end

return M

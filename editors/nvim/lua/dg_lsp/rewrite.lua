-- :DgRewrite / :DgFix — a model edit of whole lines, previewed as a diff that you accept or reject.
--
-- Getting the edit never changes the buffer:
--   * rewrite: code action `refactor.rewrite` + codeAction/resolve (the resolved action carries the WorkspaceEdit),
--     falling back to the `dg.rewriteBlock` command;
--   * fix: the `dg.fixBlock` command.
-- Commands are called as [uri, range, version, { apply = false }]: the server returns the WorkspaceEdit and does not
-- send workspace/applyEdit. A server without that 4th argument rejects it (InvalidParams); the plugin then calls it
-- with three and, while waiting, answers that server's workspace/applyEdit for this document with applied = false
-- (see `M.intercept_apply_edit`), so nothing is applied before you accept.
-- The diff opens in a floating window: `a` / <CR> apply, `r` / `q` / <Esc> reject. It applies only if the buffer
-- is unchanged since the request. `preview = false` applies at once (the old behaviour).
local util = require('dg_lsp.util')
local api = vim.api

local M = {}

M.timeout_ms = 60000
M.preview = true
M.keys = { accept = { 'a', '<CR>' }, reject = { 'r', 'q', '<Esc>' } }

--- uri -> true while a preview is waiting for that document's edit (see intercept_apply_edit).
M._previewing = {}
--- The open preview, if any: { buf, win, accept = fn, reject = fn, diff = string }.
M._open = nil

local function notify(msg, level)
  vim.notify('dg_lsp: ' .. msg, level or vim.log.levels.INFO)
end

--- LSP range covering lines line1..line2 (1-based, inclusive).
function M.line_range(bufnr, line1, line2, encoding)
  local count = api.nvim_buf_line_count(bufnr)
  line1 = math.max(1, math.min(line1, count))
  line2 = math.max(line1, math.min(line2, count))
  local finish
  if line2 < count then
    finish = { line = line2, character = 0 }
  else
    local last = util.get_line(bufnr, line2 - 1)
    finish = { line = line2 - 1, character = util.lsp_char(last, #last, encoding) }
  end
  return { start = { line = line1 - 1, character = 0 }, ['end'] = finish }
end

--- Handler for workspace/applyEdit (installed by setup): while a preview is waiting for a document's edit, a
--- server that applies it anyway (an older one, without the `apply = false` argument) is told applied = false.
function M.intercept_apply_edit(err, params, ctx, config)
  local changes = params and params.edit or {}
  for uri in pairs(changes.changes or {}) do
    if M._previewing[uri] then
      return { applied = false, failureReason = 'dg_lsp: previewing the edit; it applies when the user accepts it' }
    end
  end
  for _, dc in ipairs(changes.documentChanges or {}) do
    if dc.textDocument and M._previewing[dc.textDocument.uri] then
      return { applied = false, failureReason = 'dg_lsp: previewing the edit; it applies when the user accepts it' }
    end
  end
  return vim.lsp.handlers['workspace/applyEdit'](err, params, ctx, config)
end

--- The TextEdits of `edit` for `uri` (changes or documentChanges).
local function edits_for(edit, uri)
  local out = {}
  for u, list in pairs(edit.changes or {}) do
    if u == uri then
      vim.list_extend(out, list)
    end
  end
  for _, dc in ipairs(edit.documentChanges or {}) do
    if dc.textDocument and dc.textDocument.uri == uri and dc.edits then
      vim.list_extend(out, dc.edits)
    end
  end
  return out
end

--- The buffer's lines after `edits`, computed on a scratch copy.
local function lines_after(bufnr, edits, enc)
  local scratch = api.nvim_create_buf(false, true)
  api.nvim_buf_set_lines(scratch, 0, -1, false, api.nvim_buf_get_lines(bufnr, 0, -1, false))
  vim.lsp.util.apply_text_edits(edits, scratch, enc)
  local lines = api.nvim_buf_get_lines(scratch, 0, -1, false)
  api.nvim_buf_delete(scratch, { force = true })
  return lines
end

--- A unified diff of the buffer before and after `edit`, or nil when it changes nothing in this buffer.
function M.diff(bufnr, edit, enc)
  local uri = vim.uri_from_bufnr(bufnr)
  local edits = edits_for(edit, uri)
  if #edits == 0 then
    return nil
  end
  local old = table.concat(api.nvim_buf_get_lines(bufnr, 0, -1, false), '\n') .. '\n'
  local new = table.concat(lines_after(bufnr, edits, enc), '\n') .. '\n'
  if old == new then
    return nil
  end
  local diff = (vim.text and vim.text.diff or vim.diff)(old, new, { result_type = 'unified', ctxlen = 3 })
  return diff
end

local function close_preview()
  local open = M._open
  M._open = nil
  if open and api.nvim_win_is_valid(open.win) then
    api.nvim_win_close(open.win, true)
  end
  if open and api.nvim_buf_is_valid(open.buf) then
    api.nvim_buf_delete(open.buf, { force = true })
  end
end

--- Show `diff` in a floating window; `decide(true|false)` runs once, on accept or reject (closing it rejects).
local function show_preview(title, diff, decide)
  close_preview()
  local lines = vim.split(diff:gsub('\n$', ''), '\n', { plain = true })
  local buf = api.nvim_create_buf(false, true)
  api.nvim_buf_set_lines(buf, 0, -1, false, lines)
  vim.bo[buf].filetype = 'diff'
  vim.bo[buf].modifiable = false
  vim.bo[buf].bufhidden = 'wipe'
  local width = 20
  for _, l in ipairs(lines) do
    width = math.max(width, vim.fn.strdisplaywidth(l))
  end
  width = math.min(width + 2, math.max(20, vim.o.columns - 4))
  local height = math.min(#lines, math.max(3, vim.o.lines - 6))
  local win = api.nvim_open_win(buf, true, {
    relative = 'editor',
    row = math.max(0, math.floor((vim.o.lines - height) / 2) - 1),
    col = math.max(0, math.floor((vim.o.columns - width) / 2)),
    width = width,
    height = height,
    border = 'rounded',
    style = 'minimal',
    title = (' %s: a apply · r reject '):format(title),
    title_pos = 'center',
  })
  local decided = false
  local function finish(ok)
    if decided then
      return
    end
    decided = true
    close_preview()
    decide(ok)
  end
  M._open = {
    buf = buf,
    win = win,
    diff = diff,
    accept = function()
      finish(true)
    end,
    reject = function()
      finish(false)
    end,
  }
  for _, lhs in ipairs(M.keys.accept) do
    vim.keymap.set('n', lhs, M._open.accept, { buffer = buf, nowait = true, desc = 'dg_lsp: apply the edit' })
  end
  for _, lhs in ipairs(M.keys.reject) do
    vim.keymap.set('n', lhs, M._open.reject, { buffer = buf, nowait = true, desc = 'dg_lsp: reject the edit' })
  end
  api.nvim_create_autocmd({ 'BufWipeout', 'WinLeave' }, {
    buffer = buf,
    once = true,
    callback = function()
      vim.schedule(function()
        finish(false) -- left without answering: nothing applied
      end)
    end,
  })
end

--- Whether a preview is open, and its diff text.
function M.preview_text()
  return M._open and M._open.diff or nil
end

function M.accept_preview()
  if M._open then
    M._open.accept()
  end
end

function M.reject_preview()
  if M._open then
    M._open.reject()
  end
end

local function is_invalid_params(err)
  return type(err) == 'table' and err.code == -32602
end

--- Run `kind` ('rewrite' | 'fix') on lines line1..line2 of `bufnr`.
--- `on_done(ok, message)` runs when finished: after the edit is applied, rejected, or failed.
---@param opts? { preview?: boolean }
function M.run(kind, bufnr, line1, line2, on_done, opts)
  bufnr = (bufnr == nil or bufnr == 0) and api.nvim_get_current_buf() or bufnr
  local preview = M.preview
  if opts and opts.preview ~= nil then
    preview = opts.preview
  end
  local title = kind == 'fix' and 'Fix block' or 'Rewrite block'
  local command_name = kind == 'fix' and 'dg.fixBlock' or 'dg.rewriteBlock'
  on_done = on_done
    or function(ok, msg)
      if not ok then
        notify(msg, msg:find('rejected', 1, true) and vim.log.levels.INFO or vim.log.levels.WARN)
      end
    end
  local client = util.client(bufnr)
  if not client then
    on_done(false, 'dg-lsp is not attached to this buffer (see :checkhealth dg_lsp)')
    return
  end
  local enc = client.offset_encoding or 'utf-16'
  local range = M.line_range(bufnr, line1, line2, enc)
  local uri = vim.uri_from_bufnr(bufnr)
  local tick = api.nvim_buf_get_changedtick(bufnr)
  local version = vim.lsp.util.buf_versions[bufnr]
  local finished = false
  local timer = vim.defer_fn(function()
    if not finished then
      finished = true
      M._previewing[uri] = nil
      on_done(false, ('the %s took longer than %d ms'):format(title:lower(), M.timeout_ms))
    end
  end, M.timeout_ms)

  local function finish(ok, msg)
    if finished then
      return
    end
    finished = true
    M._previewing[uri] = nil
    if not timer:is_closing() then
      timer:stop()
      timer:close()
    end
    on_done(ok, msg)
  end

  local function apply(edit)
    if not api.nvim_buf_is_valid(bufnr) or api.nvim_buf_get_changedtick(bufnr) ~= tick then
      finish(false, 'the buffer changed since the edit was made; nothing applied')
      return
    end
    vim.lsp.util.apply_workspace_edit(edit, enc)
    finish(true, kind == 'fix' and 'fixed' or 'rewritten')
  end

  --- The edit is here: show it, or apply it at once without preview.
  local function got(edit)
    if finished then
      return
    end
    M._previewing[uri] = nil
    if not edit then
      finish(false, ('no %s for this block'):format(kind == 'fix' and 'fix' or 'rewrite'))
      return
    end
    if not preview then
      apply(edit)
      return
    end
    if api.nvim_buf_get_changedtick(bufnr) ~= tick then
      finish(false, 'the buffer changed while the model worked; nothing applied')
      return
    end
    local diff = M.diff(bufnr, edit, enc)
    if not diff then
      finish(false, ('the %s changes nothing'):format(kind == 'fix' and 'fix' or 'rewrite'))
      return
    end
    show_preview(title, diff, function(ok)
      if ok then
        apply(edit)
      else
        finish(false, title .. ' rejected; nothing applied')
      end
    end)
  end

  local function run_command(name, args)
    M._previewing[uri] = true
    local full = vim.list_extend(vim.deepcopy(args), { version or vim.NIL, { apply = false } })
    client:exec_cmd({ title = title, command = name, arguments = full }, { bufnr = bufnr }, function(err, result)
      if is_invalid_params(err) and not finished then
        -- A server without the `apply` argument: call it with three; intercept_apply_edit keeps it unapplied.
        client:exec_cmd({ title = title, command = name, arguments = { args[1], args[2], version } }, { bufnr = bufnr }, function(err2, result2)
          if err2 then
            finish(false, ('%s failed: %s'):format(title:lower(), err2.message or vim.inspect(err2)))
          else
            got(type(result2) == 'table' and (result2.changes or result2.documentChanges) and result2 or nil)
          end
        end)
        return
      end
      if err then
        finish(false, ('%s failed: %s'):format(title:lower(), err.message or vim.inspect(err)))
      else
        got(type(result) == 'table' and (result.changes or result.documentChanges) and result or nil)
      end
    end)
  end

  if kind == 'fix' then
    run_command(command_name, { uri, range })
    return
  end

  local function use(action)
    if action.edit then
      got(action.edit)
    elseif action.command then
      local cmd = type(action.command) == 'table' and action.command or action
      local a = cmd.arguments or {}
      run_command(cmd.command, { a[1] or uri, a[2] or range })
    else
      finish(false, 'no rewrite for this block')
    end
  end

  local params = {
    textDocument = { uri = uri },
    range = range,
    context = { diagnostics = {}, only = { 'refactor.rewrite' }, triggerKind = 1 },
  }
  client:request('textDocument/codeAction', params, function(err, actions)
    if finished then
      return
    end
    if err then
      finish(false, 'code action failed: ' .. (err.message or vim.inspect(err)))
      return
    end
    local action
    for _, a in ipairs(actions or {}) do
      if type(a.command) ~= 'string' and (a.kind or ''):find('^refactor%.rewrite') then
        action = a
        break
      end
    end
    if not action then
      run_command(command_name, { uri, range })
      return
    end
    if action.edit or action.command then
      use(action)
      return
    end
    client:request('codeAction/resolve', action, function(rerr, resolved)
      if finished then
        return
      end
      if rerr or not resolved then
        finish(false, 'resolving the rewrite failed: ' .. (rerr and rerr.message or 'no result'))
        return
      end
      use(resolved)
    end, bufnr)
  end, bufnr)
end

--- Rewrite lines line1..line2 of `bufnr` (preview first unless opts.preview == false).
function M.rewrite(bufnr, line1, line2, on_done, opts)
  return M.run('rewrite', bufnr, line1, line2, on_done, opts)
end

--- Fix lines line1..line2 of `bufnr` with the server's dg.fixBlock (preview first unless opts.preview == false).
function M.fix(bufnr, line1, line2, on_done, opts)
  return M.run('fix', bufnr, line1, line2, on_done, opts)
end

return M

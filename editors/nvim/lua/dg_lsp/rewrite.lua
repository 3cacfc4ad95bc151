-- :DgRewrite — "Rewrite this block" on whole lines: code action (refactor.rewrite) + codeAction/resolve,
-- falling back to the dg.rewriteBlock command; the WorkspaceEdit is applied to the buffer.
local util = require('dg_lsp.util')
local api = vim.api

local M = {}

M.timeout_ms = 60000

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

--- Rewrite lines line1..line2 of `bufnr`. `on_done(ok, message)` runs when finished (after the edit).
function M.rewrite(bufnr, line1, line2, on_done)
  bufnr = (bufnr == nil or bufnr == 0) and api.nvim_get_current_buf() or bufnr
  on_done = on_done or function(ok, msg)
    if not ok then
      notify(msg, vim.log.levels.WARN)
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
  local finished = false
  local timer = vim.defer_fn(function()
    if not finished then
      finished = true
      on_done(false, ('the rewrite took longer than %d ms'):format(M.timeout_ms))
    end
  end, M.timeout_ms)

  local function finish(ok, msg)
    if finished then
      return
    end
    finished = true
    if not timer:is_closing() then
      timer:stop()
      timer:close()
    end
    on_done(ok, msg)
  end

  local function apply(edit)
    if api.nvim_buf_get_changedtick(bufnr) ~= tick then
      finish(false, 'the buffer changed while rewriting; nothing applied')
      return false
    end
    vim.lsp.util.apply_workspace_edit(edit, enc)
    return true
  end

  local function run_command(command)
    client:exec_cmd(command, { bufnr = bufnr }, function(err)
      if err then
        finish(false, 'rewrite failed: ' .. (err.message or vim.inspect(err)))
      else
        -- The server applied the edit through workspace/applyEdit before answering.
        finish(true, 'rewritten')
      end
    end)
  end

  local function fallback()
    run_command({ title = 'Rewrite block', command = 'dg.rewriteBlock', arguments = { uri, range } })
  end

  local function use(action)
    if action.edit then
      if not apply(action.edit) then
        return
      end
    end
    if action.command then
      local cmd = type(action.command) == 'table' and action.command or action
      run_command(cmd)
    elseif action.edit then
      finish(true, 'rewritten')
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
      fallback()
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

return M

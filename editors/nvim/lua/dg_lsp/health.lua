-- :checkhealth dg_lsp
local M = {}

function M.check()
  local h = vim.health
  local dg = require('dg_lsp')
  local ghost = require('dg_lsp.ghost')

  h.start('dg_lsp: Neovim')
  local v = vim.version()
  local vs = ('%d.%d.%d'):format(v.major, v.minor, v.patch)
  if vim.fn.has('nvim-0.11') == 1 then
    h.ok('Neovim ' .. vs)
  else
    h.error('Neovim ' .. vs .. ': dg_lsp needs 0.11+ (vim.lsp.config / vim.lsp.enable)')
  end
  if ghost.native_available() then
    h.ok('ghost text: native vim.lsp.inline_completion available (0.12+)')
  else
    h.ok("ghost text: the plugin's virtual-text backend (Neovim < 0.12)")
  end

  h.start('dg_lsp: server')
  if not dg.opts then
    h.warn('setup() has not been called', { 'Add require("dg_lsp").setup({}) to your config.' })
  end
  local cmd, why = dg.resolve_cmd(dg.opts or dg.defaults)
  if not cmd then
    h.error(why or 'dg-lsp not found', {
      'pip install dg-lsp (in a virtualenv)',
      'setup({ python = "/path/to/venv/bin/python" }) or setup({ cmd = { "/path/to/dg-lsp", "--stdio" } })',
    })
  else
    h.ok('command: ' .. table.concat(cmd, ' '))
    local probe = vim.deepcopy(cmd)
    -- Ask the program for its help text: proves it starts (imports work) without loading a model.
    for i = #probe, 2, -1 do
      if probe[i] == '--stdio' then
        table.remove(probe, i)
      end
    end
    table.insert(probe, '--help')
    local ok, res = pcall(function()
      return vim.system(probe, { text = true }):wait(20000)
    end)
    if ok and res and res.code == 0 then
      h.ok('`' .. table.concat(probe, ' ') .. '` runs')
    else
      local out = ok and res and ((res.stderr or '') .. (res.stdout or '')) or tostring(res)
      h.warn('`' .. table.concat(probe, ' ') .. '` failed: ' .. vim.trim(out):sub(1, 500))
    end
  end

  h.start('dg_lsp: clients')
  local clients = vim.lsp.get_clients({ name = 'dg_lsp' })
  if #clients == 0 then
    h.info('no dg_lsp client is running (open a file; :DgRestart after fixing a problem)')
  end
  for _, client in ipairs(clients) do
    local bufs = vim.tbl_keys(client.attached_buffers or {})
    table.sort(bufs)
    local s = dg._status[client.id] or {}
    local line = ('client %d, buffers %s, state %s, model %s, device %s'):format(
      client.id,
      table.concat(bufs, ','),
      s.state or 'starting',
      s.model or '?',
      s.device or '?'
    )
    if s.state == 'error' then
      h.error(line .. ': ' .. (s.message or ''), { 'Log: ' .. vim.lsp.log.get_filename() })
    elseif s.state == 'ready' then
      h.ok(line)
    else
      h.info(line)
    end
    local caps = client.server_capabilities or {}
    if caps.inlineCompletionProvider then
      h.ok('server offers inline completion')
    else
      h.warn('server does not advertise textDocument/inlineCompletion')
    end
  end
  local keys = (dg.opts or dg.defaults).keys or {}
  local shown = {}
  for _, k in ipairs({ 'accept', 'accept_line', 'accept_word', 'dismiss', 'next', 'prev', 'trigger' }) do
    if keys[k] then
      shown[#shown + 1] = k .. '=' .. keys[k]
    end
  end
  h.info('insert-mode keys: ' .. table.concat(shown, ' '))
end

return M

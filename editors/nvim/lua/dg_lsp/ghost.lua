-- Ghost text (inline completion).
--
-- Two backends behind one small API (enable / accept / accept_line / dismiss / next / prev / trigger / visible):
--   * "native": Neovim 0.12+'s vim.lsp.inline_completion,
--   * "plugin": a small virtual-text implementation over textDocument/inlineCompletion, for Neovim 0.11.
-- A suggestion belongs to the text and cursor position it was made for (changedtick + cursor): any edit or move
-- that leaves them hides it, and accepting checks them again, so an old suggestion is never drawn or inserted
-- elsewhere. Keys are buffer-local insert-mode mappings that do nothing when no suggestion is shown (or type
-- themselves, with `keys_fallback`), and <Tab> is not mapped unless the user asks for it.
local util = require('dg_lsp.util')
local api = vim.api

local M = {}

M.ns = api.nvim_create_namespace('dg_lsp.ghost')
local NATIVE_NS = 'nvim.lsp.inline_completion'

---@class dg_lsp.GhostState
---@field client_id integer
---@field items table[]
---@field index integer
---@field tick integer changedtick the items belong to
---@field pos integer[] {row, col} (0-based, bytes) the items belong to
---@field timer uv.uv_timer_t?
---@field request_id integer?
---@field augroup integer

---@type table<integer, dg_lsp.GhostState>
local state = {}

---@type table<integer, 'native'|'plugin'>
local mode_of = {}

M.debounce_ms = 75

function M.native_available()
  return vim.lsp.inline_completion ~= nil and vim.lsp.inline_completion.enable ~= nil
end

function M.mode(bufnr)
  return mode_of[bufnr == 0 and api.nvim_get_current_buf() or bufnr]
end

-- ---------------------------------------------------------------------------------------------------------
-- plugin backend

local function cursor(bufnr)
  local win = vim.fn.bufwinid(bufnr)
  if win == -1 then
    return nil
  end
  local c = api.nvim_win_get_cursor(win)
  return { c[1] - 1, c[2] }
end

local function clear(bufnr)
  if api.nvim_buf_is_valid(bufnr) then
    api.nvim_buf_clear_namespace(bufnr, M.ns, 0, -1)
  end
end

local function stop_timer(st)
  if st.timer then
    st.timer:stop()
    if not st.timer:is_closing() then
      st.timer:close()
    end
    st.timer = nil
  end
end

local function cancel_request(st)
  if st.request_id then
    local client = vim.lsp.get_client_by_id(st.client_id)
    if client then
      pcall(client.cancel_request, client, st.request_id)
    end
    st.request_id = nil
  end
end

--- Are the plugin backend's items still for this text and cursor position?
local function fresh(bufnr, st)
  if #st.items == 0 or api.nvim_buf_get_changedtick(bufnr) ~= st.tick then
    return false
  end
  local pos = cursor(bufnr)
  return pos ~= nil and pos[1] == st.pos[1] and pos[2] == st.pos[2]
end

local function insert_text(item)
  local t = item.insertText
  if type(t) == 'table' then
    t = t.value
  end
  return (t or ''):gsub('\r\n', '\n'):gsub('\r', '\n')
end

--- The current item as byte positions plus the text it adds after the cursor.
local function resolve_item(bufnr, st)
  local item = st.items[st.index]
  if not item then
    return nil
  end
  local client = vim.lsp.get_client_by_id(st.client_id)
  local enc = client and client.offset_encoding or 'utf-16'
  local pos = cursor(bufnr)
  if not pos then
    return nil
  end
  local text = insert_text(item)
  local sr, sc, er, ec
  if item.range then
    sr, sc, er, ec = util.range_to_bytes(bufnr, item.range, enc)
  else
    sr, sc, er, ec = pos[1], pos[2], pos[1], pos[2]
  end
  -- Text between the range start and the cursor was already typed; the ghost shows the rest.
  local typed = ''
  if sr == pos[1] and sc <= pos[2] then
    typed = util.get_line(bufnr, sr):sub(sc + 1, pos[2])
  end
  local remaining = text
  if typed ~= '' and text:sub(1, #typed) == typed then
    remaining = text:sub(#typed + 1)
  end
  return { sr = sr, sc = sc, er = er, ec = ec, text = text, typed = typed, remaining = remaining, pos = pos }
end

local function render(bufnr)
  clear(bufnr)
  local st = state[bufnr]
  if not st then
    return
  end
  local r = resolve_item(bufnr, st)
  if not r or r.remaining == '' then
    return
  end
  local lines = vim.split(r.remaining, '\n', { plain = true })
  local virt_lines = {}
  for i = 2, #lines do
    virt_lines[#virt_lines + 1] = { { lines[i], 'DgGhostText' } }
  end
  local virt_text = { { lines[1], 'DgGhostText' } }
  if #st.items > 1 then
    local hint = { (' (%d/%d)'):format(st.index, #st.items), 'DgGhostTextHint' }
    table.insert(#virt_lines > 0 and virt_lines[#virt_lines] or virt_text, hint)
  end
  api.nvim_buf_set_extmark(bufnr, M.ns, r.pos[1], r.pos[2], {
    virt_text = virt_text,
    virt_text_pos = 'inline',
    virt_lines = #virt_lines > 0 and virt_lines or nil,
    hl_mode = 'combine',
    priority = 200,
  })
end

local function request(bufnr, trigger_kind)
  local st = state[bufnr]
  if not st then
    return
  end
  local client = vim.lsp.get_client_by_id(st.client_id)
  if not client or api.nvim_get_current_buf() ~= bufnr then
    return
  end
  cancel_request(st)
  local pos = cursor(bufnr)
  if not pos then
    return
  end
  local tick = api.nvim_buf_get_changedtick(bufnr)
  local line = util.get_line(bufnr, pos[1])
  local params = {
    textDocument = { uri = vim.uri_from_bufnr(bufnr) },
    position = { line = pos[1], character = util.lsp_char(line, pos[2], client.offset_encoding) },
    context = { triggerKind = trigger_kind or 2 },
  }
  -- `id` declared first: the callback must see this request's id (a `local ok, id = ...` is not in scope inside
  -- its own expression), so an answered request is forgotten and never cancelled after the fact.
  local ok, id
  ok, id = client:request('textDocument/inlineCompletion', params, function(err, result)
    if st.request_id == id then
      st.request_id = nil
    end
    if err or not result or state[bufnr] ~= st then
      return
    end
    local now = cursor(bufnr)
    if api.nvim_buf_get_changedtick(bufnr) ~= tick or not now or now[1] ~= pos[1] or now[2] ~= pos[2] then
      return -- stale: the user typed on
    end
    if not api.nvim_get_mode().mode:match('^i') then
      return
    end
    st.items = result.items or result
    st.index = 1
    st.tick = tick
    st.pos = pos
    render(bufnr)
  end, bufnr)
  if ok then
    st.request_id = id
  end
end

local function schedule_request(bufnr)
  local st = state[bufnr]
  if not st then
    return
  end
  stop_timer(st)
  st.items, st.index = {}, 1
  clear(bufnr)
  st.timer = vim.defer_fn(function()
    st.timer = nil
    if api.nvim_buf_is_valid(bufnr) and api.nvim_get_mode().mode:match('^i') then
      request(bufnr, 2)
    end
  end, M.debounce_ms)
end

local function plugin_attach(bufnr, client)
  local group = api.nvim_create_augroup('dg_lsp.ghost.' .. bufnr, { clear = true })
  state[bufnr] = { client_id = client.id, items = {}, index = 1, tick = -1, pos = { -1, -1 }, augroup = group }
  api.nvim_create_autocmd({ 'InsertEnter', 'TextChangedI', 'CursorMovedI' }, {
    group = group,
    buffer = bufnr,
    callback = function()
      local st = state[bufnr]
      if not st then
        return
      end
      local pos = cursor(bufnr)
      -- Moving the cursor onto the suggestion's own position (e.g. after render) keeps it.
      if
        #st.items > 0
        and pos
        and pos[1] == st.pos[1]
        and pos[2] == st.pos[2]
        and api.nvim_buf_get_changedtick(bufnr) == st.tick
      then
        return
      end
      schedule_request(bufnr)
    end,
  })
  api.nvim_create_autocmd({ 'InsertLeave', 'BufLeave' }, {
    group = group,
    buffer = bufnr,
    callback = function()
      M.dismiss(bufnr)
    end,
  })
  api.nvim_create_autocmd('LspDetach', {
    group = group,
    buffer = bufnr,
    callback = function(args)
      if args.data and args.data.client_id == client.id then
        M.detach(bufnr)
      end
    end,
  })
end

local function plugin_accept(bufnr, partial)
  local st = state[bufnr]
  if not st or #st.items == 0 then
    return false
  end
  if not fresh(bufnr, st) then
    -- Made for another text or position: applying its range here would insert it in the wrong place.
    st.items = {}
    clear(bufnr)
    return false
  end
  local r = resolve_item(bufnr, st)
  if not r or r.remaining == '' then
    return false
  end
  local take = util.take(r.remaining, partial)
  local full = take == r.remaining
  local item_command = st.items[st.index] and st.items[st.index].command
  stop_timer(st)
  cancel_request(st)
  st.items = {}
  clear(bufnr)
  if full then
    -- The whole item: replace its range (it may also replace text after the cursor).
    util.set_text(bufnr, r.sr, r.sc, r.er, r.ec, r.text)
  else
    util.set_text(bufnr, r.pos[1], r.pos[2], r.pos[1], r.pos[2], take)
  end
  if full and item_command then
    local client = vim.lsp.get_client_by_id(st.client_id)
    if client then
      client:exec_cmd(item_command, { bufnr = bufnr })
    end
  end
  return true
end

-- ---------------------------------------------------------------------------------------------------------
-- native backend helpers

local function native_ns()
  return api.nvim_get_namespaces()[NATIVE_NS]
end

--- Per buffer: the inlineCompletion requests in flight ({tick, pos} by request id), the last one answered, and
--- `made`: the item the native backend shows and the {tick, pos} it was asked for.
---@type table<integer, {pending: table<integer, table>, answered: table?, made: table?}>
local native = {}

--- The native backend's per-buffer object (vim.lsp.inline_completion's Completor), or nil. Internal to Neovim:
--- read defensively; without it the plugin falls back to checking the request's changedtick and position only.
local function completor(bufnr)
  local ok, cap = pcall(require, 'vim.lsp._capability')
  local class = ok and type(cap) == 'table' and cap.all and cap.all.inline_completion
  local c = class and class.active and class.active[bufnr]
  return type(c) == 'table' and c or nil
end

--- Neovim 0.12's vim.lsp.inline_completion waits a fixed 200 ms after every keystroke before it asks
--- (Completor:automatic_request, not configurable), longer than the gap between keys of someone typing (~110 ms at
--- 9 keys/s): it only ever asks once the typist stops, and a suggestion shows 200 ms + the answer's time after the
--- last key. Give the buffer's Completor our `debounce_ms` instead. Its own parts (show, reset_timer, request) are
--- kept; when it does not have them (another Neovim version), its own 200 ms stays. The Completor is recreated by
--- every vim.lsp.inline_completion.enable() for the client, so this runs again on each event we see (our autocmds
--- run before a recreated Completor's own).
local function native_tune(bufnr)
  local c = completor(bufnr)
  if not c or c._dg_debounce_ms == M.debounce_ms then
    return
  end
  if type(c.show) ~= 'function' or type(c.reset_timer) ~= 'function' or type(c.request) ~= 'function' then
    return
  end
  c._dg_debounce_ms = M.debounce_ms
  c.automatic_request = function(self)
    self:show()
    self:reset_timer()
    self.timer = vim.defer_fn(function()
      self:request(2) -- InlineCompletionTriggerKind.Automatic
    end, math.max(0, M.debounce_ms or 0))
  end
end

--- Is what the native backend shows (or would accept) made for the buffer's current text and cursor?
local function native_fresh(bufnr)
  local n = native[bufnr]
  local made = n and n.made
  if not made then
    return false
  end
  local c = completor(bufnr)
  if c and (c.current == nil or c.current ~= made.item) then
    return false
  end
  local pos = cursor(bufnr)
  return pos ~= nil
    and api.nvim_buf_get_changedtick(bufnr) == made.tick
    and pos[1] == made.pos[1]
    and pos[2] == made.pos[2]
end

--- Hide the native suggestion and forget it (so neither its redraw on the next cursor move nor get() uses it).
local function native_hide(bufnr)
  local c = completor(bufnr)
  if c then
    if c.hide then
      pcall(c.hide, c)
    end
    c.current = nil
  end
  local ns = native_ns()
  if ns and api.nvim_buf_is_valid(bufnr) then
    api.nvim_buf_clear_namespace(bufnr, ns, 0, -1)
  end
  if native[bufnr] then
    native[bufnr].made = nil
  end
end

local function native_check(bufnr)
  local c = completor(bufnr)
  local shown = (c and c.current ~= nil) or (native[bufnr] and native[bufnr].made ~= nil)
  if shown and not native_fresh(bufnr) then
    native_hide(bufnr)
  end
end

--- Track which text and position the native backend's answers were made for: LspRequest 'pending' fires when
--- the request is sent (params taken at that changedtick and cursor), 'complete' just before its handler runs.
local function native_attach(bufnr, client)
  native[bufnr] = { pending = {} }
  local group = api.nvim_create_augroup('dg_lsp.ghost.native.' .. bufnr, { clear = true })
  api.nvim_create_autocmd('LspRequest', {
    group = group,
    buffer = bufnr,
    callback = function(args)
      local d = args.data or {}
      local n = native[bufnr]
      if not n or d.client_id ~= client.id or not d.request or d.request.method ~= 'textDocument/inlineCompletion' then
        return
      end
      if d.request.type == 'pending' then
        n.pending[d.request_id] = { tick = api.nvim_buf_get_changedtick(bufnr), pos = cursor(bufnr) or { -1, -1 } }
      elseif d.request.type == 'complete' then
        n.answered = n.pending[d.request_id] or n.answered
        n.pending[d.request_id] = nil
        -- Runs after the native handler stored (or, for null/errors, kept) its items.
        vim.schedule(function()
          if native[bufnr] ~= n then
            return
          end
          local c = completor(bufnr)
          local item = c and c.current
          if c and item ~= nil and (not n.made or n.made.item ~= item) and n.answered then
            n.made = { item = item, tick = n.answered.tick, pos = n.answered.pos }
          elseif not c and n.answered then
            n.made = { tick = n.answered.tick, pos = n.answered.pos }
          end
          native_check(bufnr)
        end)
      else
        n.pending[d.request_id] = nil
      end
    end,
  })
  -- Every edit or cursor move: hide a suggestion made for other text (Neovim 0.12 redraws its last item, at its
  -- old position, on each cursor move until a new answer arrives).
  api.nvim_create_autocmd({ 'TextChangedI', 'CursorMovedI', 'InsertEnter' }, {
    group = group,
    buffer = bufnr,
    callback = function()
      native_tune(bufnr)
      vim.schedule(function()
        if native[bufnr] then
          native_check(bufnr)
        end
      end)
    end,
  })
  api.nvim_create_autocmd('InsertLeave', {
    group = group,
    buffer = bufnr,
    callback = function()
      if native[bufnr] then
        native[bufnr].made = nil
      end
    end,
  })
  native[bufnr].augroup = group
end

--- The native backend's visible text, read back from its extmarks.
local function native_text(bufnr)
  local ns = native_ns()
  if not ns then
    return nil
  end
  local marks = api.nvim_buf_get_extmarks(bufnr, ns, 0, -1, { details = true })
  for _, m in ipairs(marks) do
    local d = m[4] or {}
    local parts = {}
    local first = {}
    for _, chunk in ipairs(d.virt_text or {}) do
      if chunk[2] ~= 'ComplHintMore' then
        first[#first + 1] = chunk[1]
      end
    end
    parts[1] = table.concat(first)
    for _, vl in ipairs(d.virt_lines or {}) do
      local line = {}
      for _, chunk in ipairs(vl) do
        if chunk[2] ~= 'ComplHintMore' then
          line[#line + 1] = chunk[1]
        end
      end
      parts[#parts + 1] = table.concat(line)
    end
    return table.concat(parts, '\n')
  end
  return nil
end

--- on_accept for partial acceptance with the native backend.
local function native_partial(bufnr, partial)
  return function(item)
    local text = item.insert_text
    if type(text) ~= 'string' then
      text = text.value or ''
    end
    text = text:gsub('\r\n', '\n')
    local pos = cursor(bufnr)
    if not pos then
      return
    end
    local sr, sc = pos[1], pos[2]
    local er, ec = sr, sc
    if item.range then
      sr, sc = item.range.start.row, item.range.start.col
      er, ec = item.range.end_.row, item.range.end_.col
    end
    local typed = ''
    if sr == pos[1] and sc <= pos[2] then
      typed = util.get_line(bufnr, sr):sub(sc + 1, pos[2])
    end
    local remaining = (typed ~= '' and text:sub(1, #typed) == typed) and text:sub(#typed + 1) or text
    local take = util.take(remaining, partial)
    if take == remaining then
      util.set_text(bufnr, sr, sc, er, ec, text)
    else
      util.set_text(bufnr, pos[1], pos[2], pos[1], pos[2], take)
    end
  end
end

-- Neovim can redraw after a typed key and before that key's TextChangedI / CursorMovedI (seen on the first key
-- typed over an inline suggestion, and with the native backend redrawing its last item on CursorMovedI): check
-- again at the start of every redraw, so a suggestion made for other text or another position is never drawn.
api.nvim_set_decoration_provider(api.nvim_create_namespace('dg_lsp.ghost.guard'), {
  on_start = function()
    local bufnr = api.nvim_get_current_buf()
    local mode = mode_of[bufnr]
    if mode == 'native' then
      if native[bufnr] then
        pcall(native_check, bufnr)
      end
    elseif mode == 'plugin' then
      local st = state[bufnr]
      if st and #st.items > 0 and not fresh(bufnr, st) then
        clear(bufnr)
      end
    end
    return false
  end,
})

-- ---------------------------------------------------------------------------------------------------------
-- public API

--- Start ghost text for `bufnr` with `client`.
---@param mode 'native'|'plugin'
function M.attach(bufnr, client, mode)
  if mode == 'native' and not M.native_available() then
    mode = 'plugin'
  end
  mode_of[bufnr] = mode
  if mode == 'native' then
    vim.lsp.inline_completion.enable(true, { client_id = client.id })
    native_attach(bufnr, client)
    native_tune(bufnr)
  else
    plugin_attach(bufnr, client)
  end
end

function M.detach(bufnr)
  local st = state[bufnr]
  if st then
    stop_timer(st)
    cancel_request(st)
    pcall(api.nvim_del_augroup_by_id, st.augroup)
    state[bufnr] = nil
  end
  if native[bufnr] then
    pcall(api.nvim_del_augroup_by_id, native[bufnr].augroup)
    native[bufnr] = nil
  end
  clear(bufnr)
  mode_of[bufnr] = nil
end

local function buf(bufnr)
  return (bufnr == nil or bufnr == 0) and api.nvim_get_current_buf() or bufnr
end

--- The suggestion text currently shown (after the cursor), or nil.
function M.visible_text(bufnr)
  bufnr = buf(bufnr)
  if mode_of[bufnr] == 'native' then
    if not native_fresh(bufnr) then
      return nil
    end
    local t = native_text(bufnr)
    return (t and t ~= '') and t or nil
  end
  local st = state[bufnr]
  if not st or not api.nvim_buf_is_valid(bufnr) or not fresh(bufnr, st) then
    return nil
  end
  if #api.nvim_buf_get_extmarks(bufnr, M.ns, 0, -1, {}) == 0 then
    return nil
  end
  local r = resolve_item(bufnr, st)
  return r and r.remaining ~= '' and r.remaining or nil
end

function M.visible(bufnr)
  return M.visible_text(bufnr) ~= nil
end

--- Accept the whole suggestion (`partial` nil), its next line ('line') or next word ('word').
---@return boolean accepted
function M.accept(bufnr, partial)
  bufnr = buf(bufnr)
  if mode_of[bufnr] == 'native' then
    if not native_fresh(bufnr) then
      native_hide(bufnr) -- made for another text or position: never insert it here
      return false
    end
    if partial then
      return vim.lsp.inline_completion.get({ bufnr = bufnr, on_accept = native_partial(bufnr, partial) })
    end
    return vim.lsp.inline_completion.get({ bufnr = bufnr })
  end
  return plugin_accept(bufnr, partial)
end

function M.accept_line(bufnr)
  return M.accept(bufnr, 'line')
end

function M.accept_word(bufnr)
  return M.accept(bufnr, 'word')
end

function M.dismiss(bufnr)
  bufnr = buf(bufnr)
  if mode_of[bufnr] == 'native' then
    native_hide(bufnr)
    return
  end
  local st = state[bufnr]
  if st then
    stop_timer(st)
    cancel_request(st)
    st.items = {}
  end
  clear(bufnr)
end

function M.select(bufnr, count)
  bufnr = buf(bufnr)
  if mode_of[bufnr] == 'native' then
    if not native_fresh(bufnr) then
      native_hide(bufnr)
      return
    end
    vim.lsp.inline_completion.select({ bufnr = bufnr, count = count })
    local c, n = completor(bufnr), native[bufnr]
    if c and n and n.made then
      n.made.item = c.current -- another candidate of the same answer: same text and position
    end
    return
  end
  local st = state[bufnr]
  if st and #st.items > 0 then
    st.index = (st.index - 1 + count) % #st.items + 1
    render(bufnr)
  end
end

--- Ask now (Invoked), without waiting for the debounce.
function M.trigger(bufnr)
  bufnr = buf(bufnr)
  if mode_of[bufnr] == 'native' then
    -- The native backend requests on InsertEnter / CursorMovedI; nudge it by re-enabling.
    local client = util.client(bufnr)
    if client then
      vim.lsp.inline_completion.enable(false, { client_id = client.id })
      vim.lsp.inline_completion.enable(true, { client_id = client.id })
      native_tune(bufnr)
      api.nvim_exec_autocmds('CursorMovedI', { buffer = bufnr, modeline = false })
    end
    return
  end
  local st = state[bufnr]
  if st then
    stop_timer(st)
    request(bufnr, 1)
  end
end

--- Ask again now (automatic trigger, no debounce: nobody is typing), e.g. when the model becomes ready: requests
--- made while it loaded were answered with nothing, and neither backend asks again until the text or the cursor
--- changes.
function M.refresh(bufnr)
  bufnr = buf(bufnr)
  if mode_of[bufnr] == 'native' then
    native_tune(bufnr)
    local c = completor(bufnr)
    if c and type(c.request) == 'function' then
      pcall(c.request, c, 2)
    elseif c and type(c.automatic_request) == 'function' then
      pcall(c.automatic_request, c)
    end
    return
  end
  local st = state[bufnr]
  if st then
    stop_timer(st)
    st.items, st.index = {}, 1
    clear(bufnr)
    request(bufnr, 2)
  end
end

--- Buffer-local insert-mode keys. A key whose action has nothing to do (no suggestion shown) does nothing, or
--- types itself when `fallback` is true (e.g. so that <Tab> as the accept key still indents).
---@param keys table<string, string|false>
---@param fallback? boolean
function M.set_keys(bufnr, keys, fallback)
  local function map(lhs, action, desc)
    if not lhs or lhs == '' then
      return
    end
    vim.keymap.set('i', lhs, function()
      if not M.visible(bufnr) and action ~= 'trigger' then
        return fallback and lhs or ''
      end
      vim.schedule(function()
        if action == 'accept' then
          M.accept(bufnr)
        elseif action == 'accept_line' then
          M.accept_line(bufnr)
        elseif action == 'accept_word' then
          M.accept_word(bufnr)
        elseif action == 'dismiss' then
          M.dismiss(bufnr)
        elseif action == 'next' then
          M.select(bufnr, 1)
        elseif action == 'prev' then
          M.select(bufnr, -1)
        elseif action == 'trigger' then
          M.trigger(bufnr)
        end
      end)
      return ''
    end, { buffer = bufnr, expr = true, replace_keycodes = true, desc = 'dg_lsp: ' .. desc })
  end
  map(keys.accept, 'accept', 'accept suggestion')
  map(keys.accept_line, 'accept_line', 'accept one line of the suggestion')
  map(keys.accept_word, 'accept_word', 'accept one word of the suggestion')
  map(keys.dismiss, 'dismiss', 'dismiss suggestion')
  map(keys.next, 'next', 'next suggestion')
  map(keys.prev, 'prev', 'previous suggestion')
  map(keys.trigger, 'trigger', 'ask for a suggestion')
end

api.nvim_set_hl(0, 'DgGhostText', { link = 'Comment', default = true })
api.nvim_set_hl(0, 'DgGhostTextHint', { link = 'NonText', default = true })

return M

-- Driver of `dg-lsp bench typing` (dg_bench/typing_session.py), run inside a headless Neovim after the
-- dg_lsp plugin's setup. It types a program key by key (nvim_input: the same typeahead as a user's keys) on timers,
-- pauses at planned places, accepts suggestions with the plugin's keys, and writes what happened as JSON.
--
-- What is drawn is sampled at every redraw (a decoration provider's on_start): the ghost text extmarks of both
-- backends, read back, are checked against the answers the server gave to requests made for the buffer's current
-- text and cursor (every textDocument/inlineCompletion is recorded at the RPC layer, below both backends, with a
-- snapshot of the text it was made for). A drawn suggestion that is not such an answer's untyped rest, at the
-- cursor, is stale.
--
-- Config: the JSON file named by $DG_BENCH_TYPING (see typing_session.py: `driver_config`).
local api, uv = vim.api, vim.uv

local cfg = vim.json.decode(table.concat(vim.fn.readfile(vim.env.DG_BENCH_TYPING), '\n'))
local PROGRAM = cfg.program ---@type string
local HINT_GROUPS = { DgGhostTextHint = true, ComplHintMore = true }

local function now()
  local s, us = uv.gettimeofday()
  return s + us / 1e6 -- epoch seconds, the clock of Python's time.time()
end

local function since_start()
  return now() - cfg.t0
end

local R = {
  backend = cfg.ghost,
  t_attach = nil,
  t_ready = nil,
  t_first_shown = nil,
  ready_status = nil,
  pauses = {},
  accepts = {},
  stale = {}, -- the first few stale draws, in detail
  stale_draws = 0, -- distinct stale suggestions drawn (text, position, buffer state)
  stale_samples = 0, -- redraws that showed a stale suggestion
  samples = 0, -- redraws seen
  shown_samples = 0,
  shown_on_screen = 0, -- of those, the ones whose first line was read back from the screen
  requests = 0,
  answers = 0,
  requests_after_ready = {}, -- the first inlineCompletion requests sent after dg/status ready: when sent, answered
  keys = 0,
  desync = {}, -- places where the buffer was not the program's prefix (harness problems, reported)
  errors = {},
}

local bufnr, winid
local answers = {} -- recent answers: { text, row, col, items }
local oracle_active = false

local function buf_text()
  return table.concat(api.nvim_buf_get_lines(bufnr, 0, -1, false), '\n')
end

local function cursor()
  local c = api.nvim_win_get_cursor(winid)
  return c[1] - 1, c[2]
end

-- ---------------------------------------------------------------------------------------------- requests

local function record_requests(client)
  local rpc_request = client.rpc.request
  client.rpc.request = function(method, params, callback, ...)
    if method == 'textDocument/inlineCompletion' and not oracle_active and bufnr then
      -- Changes are flushed (didChange sent) before rpc.request: this is the text the server answers for.
      local snap = { text = buf_text(), row = params.position.line, col = params.position.character }
      R.requests = R.requests + 1
      local timing = nil
      if R.t_ready and #R.requests_after_ready < 5 then -- the first ones after ready, timed
        timing = { t_sent = since_start(), row = snap.row, col = snap.col }
        R.requests_after_ready[#R.requests_after_ready + 1] = timing
      end
      local cb = callback
      callback = function(err, result, ...)
        if timing then
          timing.t_answered = since_start()
          timing.items = (not err and type(result) == 'table') and #(result.items or result) or nil
        end
        if not err and type(result) == 'table' then
          snap.items = result.items or result
          R.answers = R.answers + 1
          answers[#answers + 1] = snap
          if #answers > 400 then
            table.remove(answers, 1)
          end
        end
        return cb(err, result, ...)
      end
    end
    return rpc_request(method, params, callback, ...)
  end
end

api.nvim_create_autocmd('LspAttach', {
  callback = function(args)
    local client = vim.lsp.get_client_by_id(args.data.client_id)
    if client and client.name == 'dg_lsp' and not R.t_attach then
      R.t_attach = since_start()
      record_requests(client)
    end
  end,
})

api.nvim_create_autocmd('User', {
  pattern = 'DgStatus',
  callback = function(args)
    local d = args.data or {}
    if d.state == 'ready' and not R.t_ready then
      R.t_ready = since_start()
      R.ready_status = { model = d.model, device = d.device, message = d.message }
    elseif d.state == 'error' then
      R.errors[#R.errors + 1] = 'dg/status error: ' .. tostring(d.message)
    end
  end,
})

-- ---------------------------------------------------------------------------------------------- what is drawn

local function item_text(item)
  local t = item.insertText
  if type(t) == 'table' then
    t = t.value
  end
  return ((t or ''):gsub('\r\n', '\n'))
end

--- The text an item adds after the cursor (row, col) of `lines`, or nil when it was not made for that place:
--- its range must start on the cursor's line at or before it, end at or after it, and what lies between the range
--- start and the cursor must be the item's own beginning.
local function remaining(item, lines, row, col)
  local t = item_text(item)
  local r = item.range
  if not r then
    return t
  end
  local s, e = r.start, r['end']
  if s.line ~= row or s.character > col or e.line < row or (e.line == row and e.character < col) then
    return nil
  end
  local typed = (lines[row + 1] or ''):sub(s.character + 1, col)
  if t:sub(1, #typed) ~= typed then
    return nil
  end
  return t:sub(#typed + 1)
end

local function ghost_namespaces()
  local out = {}
  local all = api.nvim_get_namespaces()
  for _, name in ipairs({ 'dg_lsp.ghost', 'nvim.lsp.inline_completion' }) do
    if all[name] then
      out[#out + 1] = all[name]
    end
  end
  return out
end

local function chunks_text(chunks)
  local parts = {}
  for _, c in ipairs(chunks or {}) do
    if not HINT_GROUPS[c[2]] then
      parts[#parts + 1] = c[1]
    end
  end
  return table.concat(parts)
end

--- The ghost text drawn in the buffer: { row, col, text } or nil.
local function drawn()
  for _, ns in ipairs(ghost_namespaces()) do
    for _, m in ipairs(api.nvim_buf_get_extmarks(bufnr, ns, 0, -1, { details = true })) do
      local d = m[4] or {}
      if d.virt_text or d.virt_lines then
        local parts = { chunks_text(d.virt_text) }
        for _, vl in ipairs(d.virt_lines or {}) do
          parts[#parts + 1] = chunks_text(vl)
        end
        local text = table.concat(parts, '\n')
        if text ~= '' then
          return { row = m[2], col = m[3], text = text }
        end
      end
    end
  end
  return nil
end

--- Is the first line of ghost text `g` on the screen where its extmark is? (Short lines, no wrap, one window.)
local function on_screen(g)
  local first = g.text:match('^[^\n]*')
  local srow = g.row + 1 - vim.fn.line('w0', winid) + 1
  local scol = vim.fn.strdisplaywidth((api.nvim_buf_get_lines(bufnr, g.row, g.row + 1, false)[1] or ''):sub(1, g.col))
  if first == '' then
    first, srow, scol = g.text:match('^\n([^\n]*)') or '', srow + 1, 0
  end
  first = first:sub(1, 24)
  if first == '' or srow < 1 or srow > vim.o.lines - 2 then
    return nil
  end
  local got = {}
  for i = 1, #first do
    got[i] = vim.fn.screenstring(srow, scol + i)
  end
  return table.concat(got) == first
end

--- Is ghost text `g` the untyped rest of an answer made for the current text and cursor?
local function fresh(g)
  local row, col = cursor()
  if g.row ~= row or g.col ~= col then
    return false, 'drawn away from the cursor'
  end
  local lines = api.nvim_buf_get_lines(bufnr, 0, -1, false)
  local text = table.concat(lines, '\n')
  local made_here = false
  for i = #answers, 1, -1 do
    local a = answers[i]
    if a.row == row and a.col == col and a.text == text then
      made_here = true
      for _, item in ipairs(a.items) do
        if remaining(item, lines, row, col) == g.text then
          return true
        end
      end
    end
  end
  return false, made_here and 'not what the answers for this text and cursor add' or 'no answer for this text and cursor'
end

local current_pause = nil
local last_stale_key = nil
local visible = nil -- the fresh suggestion drawn at the last redraw: { text, t }

local function sample()
  if not bufnr or not api.nvim_buf_is_valid(bufnr) then
    return
  end
  R.samples = R.samples + 1
  local g = drawn()
  if not g then
    visible = nil
    return
  end
  R.shown_samples = R.shown_samples + 1
  g.on_screen = on_screen(g)
  R.shown_on_screen = R.shown_on_screen + (g.on_screen and 1 or 0)
  local ok, why = fresh(g)
  local t = since_start()
  if ok then
    visible = { text = g.text, t = t }
    R.t_first_shown = R.t_first_shown or t
    if current_pause and not current_pause.shown then
      current_pause.shown = true
      current_pause.time_to_show_ms = (t - current_pause.t_start) * 1000
      current_pause.shown_text = g.text
    end
    return
  end
  visible = nil
  R.stale_samples = R.stale_samples + 1
  local row, col = cursor()
  local key = table.concat({ g.row, g.col, g.text, row, col, api.nvim_buf_get_changedtick(bufnr) }, '\1')
  if key ~= last_stale_key then
    last_stale_key = key
    R.stale_draws = R.stale_draws + 1
    if #R.stale < 20 then
      R.stale[#R.stale + 1] = {
        t = t,
        why = why,
        drawn_at = { g.row, g.col },
        cursor = { row, col },
        text = g.text,
        line = api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1],
        in_pause = current_pause and current_pause.index or nil,
        tick = api.nvim_buf_get_changedtick(bufnr),
        on_screen = g.on_screen,
      }
    end
  end
end

local dp_ns = api.nvim_create_namespace('dg_bench.typing')
-- on_end: after every provider's on_start (the plugin's own check runs there), what this redraw drew.
api.nvim_set_decoration_provider(dp_ns, {
  on_end = function()
    local ok, err = pcall(sample)
    if not ok and #R.errors < 20 then
      R.errors[#R.errors + 1] = 'sample: ' .. tostring(err)
    end
  end,
})

-- ---------------------------------------------------------------------------------------------- the typist

local co

local function sleep(ms)
  vim.defer_fn(function()
    local ok, err = coroutine.resume(co)
    if not ok then
      R.errors[#R.errors + 1] = 'driver: ' .. tostring(err)
      R.aborted = true
      pcall(vim.fn.writefile, { vim.json.encode(R) }, cfg.out)
      vim.cmd('qa!')
    end
  end, math.max(0, math.floor(ms)))
  coroutine.yield()
end

local function wait_for(pred, timeout_ms, step_ms)
  local deadline = now() + timeout_ms / 1000
  while now() < deadline do
    if pred() then
      return true
    end
    sleep(step_ms or 10)
  end
  return pred()
end

local function key(k)
  api.nvim_input(k)
  R.keys = R.keys + 1
  sleep(cfg.key_ms)
end

local function char_key(c)
  if c == '<' then
    return '<lt>'
  elseif c == '\\' then
    return '<Bslash>'
  elseif c == '|' then
    return '<Bar>'
  end
  return c
end

local offset -- characters of PROGRAM in the buffer (the typist is right after them)

local function expected_text()
  return PROGRAM:sub(1, offset)
end

local function check_sync(where)
  local text = buf_text()
  if text ~= expected_text() and #R.desync < 20 then
    R.desync[#R.desync + 1] = { where = where, offset = offset, buffer_tail = text:sub(-80), want_tail = expected_text():sub(-80) }
  end
end

--- Ask the server directly (as the editor would, automatic trigger) whether it has a suggestion here.
local function oracle()
  local client = vim.lsp.get_clients({ name = 'dg_lsp', bufnr = bufnr })[1]
  if not client then
    return nil
  end
  local row, col = cursor()
  local params = {
    textDocument = { uri = vim.uri_from_bufnr(bufnr) },
    position = { line = row, character = col },
    context = { triggerKind = 2 },
  }
  local done, res = false, nil
  local t0 = now()
  oracle_active = true
  local ok = pcall(client.request, client, 'textDocument/inlineCompletion', params, function(err, result)
    done = true
    res = (not err and type(result) == 'table') and (result.items or result) or {}
  end, bufnr)
  oracle_active = false
  if not ok then
    return nil
  end
  wait_for(function()
    return done
  end, cfg.oracle_timeout_s * 1000, 20)
  if not done then
    return nil
  end
  local lines = api.nvim_buf_get_lines(bufnr, 0, -1, false)
  for _, item in ipairs(res) do
    local rest = remaining(item, lines, row, col)
    if rest and rest ~= '' then
      return { text = rest, ms = (now() - t0) * 1000 }
    end
  end
  return { ms = (now() - t0) * 1000 }
end

--- Accept what is shown if its first line is the start of what the typist is about to type: the whole suggestion
--- when all of it is, else its first line. Returns the accept record or nil.
local function maybe_accept(p)
  if not visible then
    return nil
  end
  local shown = visible.text
  local rest = PROGRAM:sub(offset + 1)
  local first = shown:match('^[^\n]*')
  local line_rest = rest:match('^[^\n]*')
  if first == '' or line_rest:sub(1, #first) ~= first then
    return nil
  end
  local whole = rest:sub(1, #shown) == shown
  local k = whole and cfg.accept_key or cfg.accept_line_key
  local want = whole and shown or first
  local before = buf_text()
  local a = { pause = p.index, key = whole and 'accept' or 'accept_line', text = want, t = since_start() }
  api.nvim_input(k)
  R.keys = R.keys + 1
  wait_for(function()
    return buf_text() ~= before
  end, 1000, 5)
  sleep(cfg.key_ms)
  local after = buf_text()
  local row, col = cursor()
  local new_offset = offset + #want
  local want_text = PROGRAM:sub(1, new_offset)
  local want_lines = vim.split(want_text, '\n', { plain = true })
  a.buffer = after
  a.correct = after == want_text and row == #want_lines - 1 and col == #want_lines[#want_lines]
  a.changed = after ~= before
  R.accepts[#R.accepts + 1] = a
  if a.correct then
    offset = new_offset
  else
    -- Undo what the accept did, as a user would, so the rest of the session types the same program.
    api.nvim_buf_set_lines(bufnr, 0, -1, false, vim.split(expected_text(), '\n', { plain = true }))
    local el = vim.split(expected_text(), '\n', { plain = true })
    api.nvim_win_set_cursor(winid, { #el, #el[#el] })
    sleep(cfg.key_ms)
  end
  return a
end

local function pause(kind, window_ms)
  local row, col = cursor()
  check_sync('pause')
  local p = { index = #R.pauses + 1, kind = kind, line = row + 1, col = col, t_start = since_start(), shown = false }
  R.pauses[#R.pauses + 1] = p
  current_pause = p
  if visible then -- already on screen when the typist stops (typed along with it, or answered between keys)
    p.shown, p.time_to_show_ms, p.shown_text = true, 0, visible.text
  end
  if kind == 'startup' then
    wait_for(function()
      return p.shown or (R.t_ready and since_start() > R.t_ready + cfg.startup_grace_s)
    end, cfg.startup_timeout_s * 1000, 10)
    p.t_end = since_start()
  else
    sleep(window_ms)
  end
  current_pause = nil
  p.ready = R.t_ready ~= nil and R.t_ready <= p.t_start
  if p.shown then
    p.model_has = true
    if kind ~= 'startup' then
      local a = maybe_accept(p)
      p.accepted = a and a.key or nil
    end
  elseif kind ~= 'startup' or R.t_ready then
    local o = oracle()
    p.oracle_ms = o and o.ms
    p.model_has = o ~= nil and o.text ~= nil
    p.oracle_text = o and o.text
    if o == nil then
      p.model_has = nil -- no answer in time: unknown
    end
  end
  return p
end

--- At the start of a new line (offset at its first character): autoindent copied the line above's indentation;
--- <BS> / <Tab> (softtabstop 4) to the program's, and step over it. False for an empty line.
local function indent_line()
  local line = PROGRAM:sub(offset + 1):match('^[^\n]*')
  if line == '' then
    return false
  end
  local indent = #line:match('^ *')
  for _ = 1, 12 do
    local row = cursor()
    local cur = api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ''
    local have = #cur:match('^ *')
    if have == indent then
      break
    end
    key(have > indent and '<BS>' or '<Tab>')
  end
  offset = offset + indent
  return true
end

--- Type up to the end of the program, pausing where planned.
local function type_program(line_pauses, mid_pauses)
  while offset < #PROGRAM do
    local c = PROGRAM:sub(offset + 1, offset + 1)
    if c == '\n' then
      key('<CR>')
      offset = offset + 1
      if indent_line() then
        if line_pauses[offset] then
          pause('line', cfg.pause_ms)
        end
      end
    else
      key(char_key(c))
      offset = offset + 1
      if mid_pauses[offset] then
        pause('mid', cfg.pause_ms)
      end
    end
  end
end

local function finish()
  R.final_buffer = buf_text()
  R.t_end = since_start()
  vim.fn.writefile({ vim.json.encode(R) }, cfg.out)
  vim.cmd('qa!')
end

co = coroutine.create(function()
  -- Wait for the client (a user opening the file and starting to type once the editor is up).
  wait_for(function()
    return R.t_attach ~= nil
  end, 120000, 20)
  bufnr = api.nvim_get_current_buf()
  winid = api.nvim_get_current_win()
  -- Plain autoindent (no indentexpr re-indenting typed lines), 4-space soft tabs.
  vim.bo[bufnr].indentexpr = ''
  vim.bo[bufnr].indentkeys = ''
  vim.bo[bufnr].autoindent = true
  vim.bo[bufnr].expandtab = true
  vim.bo[bufnr].shiftwidth = 4
  vim.bo[bufnr].softtabstop = 4
  vim.o.lines, vim.o.columns = 100, 200 -- the whole program on screen
  offset = cfg.start_offset
  assert(buf_text() .. '\n' == PROGRAM:sub(1, offset), 'the file does not hold the program header')
  -- `o` under the header: a new line, indented as the program's next one; there (a place where the model has a
  -- suggestion, see typing_session.py) the start-up pause waits for the first suggestion.
  api.nvim_input('G')
  key('o')
  indent_line()
  local line_pauses, mid_pauses = {}, {}
  for _, o in ipairs(cfg.line_pauses) do
    line_pauses[o] = true
  end
  for _, o in ipairs(cfg.mid_pauses) do
    mid_pauses[o] = true
  end
  local startup = pause('startup')
  R.startup_pause = startup
  table.remove(R.pauses, startup.index)
  type_program(line_pauses, mid_pauses)
  key('<Esc>') -- also drops the autoindent of a last, empty line
  check_sync('end')
  sleep(300)
  finish()
end)

vim.schedule(function()
  local ok, err = coroutine.resume(co)
  if not ok then
    R.errors[#R.errors + 1] = 'driver: ' .. tostring(err)
    R.aborted = true
    vim.fn.writefile({ vim.json.encode(R) }, cfg.out)
    vim.cmd('qa!')
  end
end)

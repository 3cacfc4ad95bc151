-- Small helpers shared by the dg_lsp modules (positions, text edits).
local M = {}

M.client_name = 'dg_lsp'

---@param bufnr integer
---@return vim.lsp.Client?
function M.client(bufnr)
  local clients = vim.lsp.get_clients({ name = M.client_name, bufnr = bufnr })
  return clients[1]
end

--- Byte column of an LSP character offset on a buffer line.
---@param line string
---@param character integer
---@param encoding string
---@return integer
function M.byte_col(line, character, encoding)
  if encoding == 'utf-8' then
    return math.min(character, #line)
  end
  local ok, col = pcall(vim.str_byteindex, line, encoding, character, false)
  if ok and type(col) == 'number' then
    return col
  end
  ok, col = pcall(vim.str_byteindex, line, character, encoding == 'utf-16')
  return ok and col or math.min(character, #line)
end

--- LSP character offset of a byte column.
---@param line string
---@param col integer
---@param encoding string
---@return integer
function M.lsp_char(line, col, encoding)
  if encoding == 'utf-8' then
    return col
  end
  local ok, idx = pcall(vim.str_utfindex, line, encoding, col, false)
  if ok and type(idx) == 'number' then
    return idx
  end
  local ok2, u32, u16 = pcall(vim.str_utfindex, line, col)
  if ok2 then
    return encoding == 'utf-16' and u16 or u32
  end
  return col
end

---@param bufnr integer
---@param row integer 0-based
---@return string
function M.get_line(bufnr, row)
  return vim.api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ''
end

--- An LSP range -> 0-based byte positions in `bufnr`.
---@return integer, integer, integer, integer
function M.range_to_bytes(bufnr, range, encoding)
  local sr, er = range.start.line, range['end'].line
  local sc = M.byte_col(M.get_line(bufnr, sr), range.start.character, encoding)
  local ec = M.byte_col(M.get_line(bufnr, er), range['end'].character, encoding)
  return sr, sc, er, ec
end

--- Insert `text` replacing [sr,sc)-(er,ec) and put the cursor at its end.
function M.set_text(bufnr, sr, sc, er, ec, text)
  text = text:gsub('\r\n', '\n'):gsub('\r', '\n')
  local lines = vim.split(text, '\n', { plain = true })
  vim.api.nvim_buf_set_text(bufnr, sr, sc, er, ec, lines)
  local win = vim.fn.bufwinid(bufnr)
  if win ~= -1 then
    local row = sr + #lines - 1
    local col = (#lines == 1 and sc or 0) + #lines[#lines]
    vim.api.nvim_win_set_cursor(win, { row + 1, col })
  end
end

--- How much of a suggestion to take: all of it, or up to the end of its next line.
---@param remaining string text the suggestion adds after the cursor
---@param partial? 'line'|'word'
---@return string
function M.take(remaining, partial)
  if partial == 'line' then
    local first_nl = remaining:find('\n', 1, true)
    if first_nl == 1 then
      local second = remaining:find('\n', 2, true)
      return second and remaining:sub(1, second - 1) or remaining
    end
    return first_nl and remaining:sub(1, first_nl - 1) or remaining
  elseif partial == 'word' then
    local word = remaining:match('^%s*[%w_]+') or remaining:match('^%s*[^%w_%s]+') or remaining:match('^%s+')
    return word or remaining
  end
  return remaining
end

return M

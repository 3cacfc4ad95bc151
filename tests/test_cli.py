"""`dg-lsp` command line: flags, the complete/rewrite/doctor sub-commands, the sub-command registry, TCP."""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import socket
import subprocess
import sys
import time

import fake_server
import pytest
from conftest import FAKE_SERVER, REPO, fake_spec, inline_params, open_document, server_env
from lsprotocol import types
from pytest_lsp import client_capabilities
from pytest_lsp.client import make_test_lsp_client

from dg_lsp import cli, pipeline
from dg_lsp.engines import LOCAL

SRC = "import math\n\n\ndef area(r):\n    return \n\n\nprint(area(2.0))\n"


def dg_lsp(argv: list[str]) -> int:
    """dg-lsp's `cli.main` in this process, `--model <json spec>` loaded as the fake engine (tests/fake_server.py)."""
    return cli.main(argv, fake_server.engines())


def fake(**overrides) -> str:
    return json.dumps(fake_spec(**overrides))


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "area.py"
    path.write_text(SRC)
    return path


def test_help_documents_every_flag():
    out = subprocess.run(
        [sys.executable, "-m", "dg_lsp.cli", "--help"], capture_output=True, text=True, cwd=REPO, env=server_env()
    ).stdout
    for flag in (
        "--stdio",
        "--tcp [HOST:]PORT",
        "--model PATH|HF_ID",
        "--device {auto,cpu,cuda}",
        "--quantize {none,8bit,4bit}",
        "--log-file",
        "--log-level",
        "--version",
    ):
        assert flag in out, flag
    for command in ("complete", "rewrite", "fix", "doctor"):
        assert command in out


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("dg-lsp ")


@pytest.mark.parametrize(
    "value, expected",
    [
        ("8765", ("127.0.0.1", 8765)),
        ("0.0.0.0:9000", ("0.0.0.0", 9000)),
        ("[::1]:7000", ("::1", 7000)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_tcp_address(value, expected):
    assert cli._host_port(value) == expected


@pytest.mark.parametrize("value", ["abc", "host:", "70000", "1.2.3.4:-1"])
def test_bad_tcp_address(value):
    with pytest.raises(argparse.ArgumentTypeError):
        cli._host_port(value)


def test_model_flags_work_before_or_after_the_sub_command():
    parser = cli.build_parser()
    before = parser.parse_args(["--device", "cpu", "complete", "f.py:1:1"])
    after = parser.parse_args(["complete", "f.py:1:1", "--device", "cpu", "--quantize", "4bit"])
    assert (before.device, before.quantize) == ("cpu", "none")
    assert (after.device, after.quantize) == ("cpu", "4bit")


def test_complete_prints_the_completion(src, capsys):
    assert dg_lsp(["complete", f"{src}:5:12", "--model", fake(text="math.pi * r ** 2")]) == 0
    assert capsys.readouterr().out == "math.pi * r ** 2\n"


def test_column_past_the_end_of_the_line_means_its_end(src, capsys):
    assert dg_lsp(["complete", f"{src}:5:99", "--json", "--model", fake(text="math.pi")]) == 0
    assert json.loads(capsys.readouterr().out)[0]["start"] == {"line": 5, "col": 12}


def test_complete_json(src, capsys):
    assert dg_lsp(["complete", f"{src}:5:12", "--json", "--model", fake(text="math.pi * r ** 2")]) == 0
    (edit,) = json.loads(capsys.readouterr().out)
    assert edit == {"start": {"line": 5, "col": 12}, "end": {"line": 5, "col": 12}, "text": "math.pi * r ** 2"}


def test_complete_uses_the_same_pipeline_as_the_server(src, monkeypatch, capsys):
    calls = []
    real = pipeline.complete
    monkeypatch.setattr(pipeline, "complete", lambda *a, **k: calls.append((a, k)) or real(*a, **k))
    assert dg_lsp(["complete", f"{src}:5:12", "--model", fake()]) == 0
    ((args, kwargs),) = calls
    assert args[1] == SRC and args[2] == SRC.index("return ") + 7 and args[3] == "python"


def test_complete_with_nothing_to_offer_exits_1(src, capsys):
    assert dg_lsp(["complete", f"{src}:5:12", "--model", fake(text="(((")]) == 1
    assert "no completion" in capsys.readouterr().err


@pytest.mark.parametrize(
    "target, message",
    [
        ("{src}:99:1", "past the end"),
        ("{src}:0:1", "1-based"),
        ("{src}:x:1", "cannot parse"),
        ("{src}", "cannot parse"),
        ("/no/such/file.py:1:1", "cannot read"),
    ],
)
def test_complete_bad_targets_exit_2(src, capsys, target, message):
    with pytest.raises(SystemExit) as info:
        dg_lsp(["complete", target.format(src=src), "--model", fake()])
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_model_that_does_not_load_exits_1(src, capsys):
    with pytest.raises(SystemExit) as info:
        dg_lsp(["complete", f"{src}:5:12", "--model", fake(load_error="no weights here")])
    assert info.value.code == 1 and "no weights here" in capsys.readouterr().err


def test_rewrite_prints_the_rewritten_block(src, capsys):
    new = "def area(r):\n    return math.pi * r * r\n"
    # the stand-in scores blocks -1 per character unless told: this rewrite is far likelier than the block, beyond
    # the price of the change, as a rewrite of working code must be (pipeline.MARGIN, rewrite_block.REWRITE_CHANNEL):
    # it is offered
    assert dg_lsp(["rewrite", f"{src}:4-5", "--model", fake(rewrite=new, scores={new: 400.0})]) == 0
    out = capsys.readouterr().out
    assert out == new
    ast.parse(SRC.replace("def area(r):\n    return \n", out))


def test_rewrite_json_and_single_line_target(src, capsys):
    assert (
        dg_lsp(
            [
                "rewrite",
                f"{src}:8",
                "--json",
                "--model",
                fake(rewrite="print(area(3.0))\n", scores={"print(area(3.0))\n": 400.0}),
            ]
        )
        == 0
    )
    (edit,) = json.loads(capsys.readouterr().out)
    # the line's code is replaced and its line break stays
    assert edit["start"] == {"line": 8, "col": 1} and edit["end"] == {"line": 8, "col": 17}
    assert edit["text"] == "print(area(3.0))"


def test_rewrite_without_a_change_exits_1(src, capsys):
    assert dg_lsp(["rewrite", f"{src}:4-5", "--model", fake()]) == 1  # the fake returns the block unchanged
    assert "no rewrite" in capsys.readouterr().err


def test_doctor_reports_each_check(capsys):
    code = dg_lsp(["doctor", "--model", fake(text="a + b")])
    out = capsys.readouterr().out
    for name in ("python:", "torch:", "bitsandbytes:", "tree-sitter:", "model:", "model load:", "completion:"):
        assert name in out, name
    assert "fake on cpu" in out and "'a + b'" in out
    assert code == (1 if "FAIL" in out else 0)


def test_doctor_reports_a_model_that_does_not_load(capsys):
    assert dg_lsp(["doctor", "--model", fake(load_error="no weights here")]) == 1
    model = fake(load_error="no weights here")
    assert f"FAIL  model load: {model}: no weights here" in capsys.readouterr().out


def test_sub_command_registry(monkeypatch, capsys):
    seen = {}

    def add_arguments(p):
        p.add_argument("--rounds", type=int, default=1)

    def run(args, engines):
        seen.update(rounds=args.rounds, device=args.device, engines=engines)
        return 3

    monkeypatch.setitem(cli.SUBCOMMANDS, "bench", cli.Subcommand(add_arguments, run, "benchmark the engine"))
    assert cli.main(["bench", "--rounds", "5", "--device", "cpu"]) == 3
    assert seen == {"rounds": 5, "device": "cpu", "engines": LOCAL}  # how dg-lsp itself loads models


async def test_tcp_transport(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # No host given: the server binds 127.0.0.1.
    proc = subprocess.Popen(
        [sys.executable, str(FAKE_SERVER), "--tcp", str(port), "--log-level", "warning", "--model", fake()],
        cwd=REPO,
        env=server_env(),
    )
    try:
        client = make_test_lsp_client()
        deadline = time.monotonic() + 15
        while True:  # the first connection that succeeds is the server's one client
            try:
                await client.start_tcp("127.0.0.1", port)
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "server did not listen"
                await asyncio.sleep(0.05)
        await client.initialize_session(types.InitializeParams(capabilities=client_capabilities("neovim")))
        uri = (tmp_path / "a.py").as_uri()
        open_document(client, uri, SRC)
        result = await client.text_document_inline_completion_async(inline_params(uri, 4, 11))
        assert result.items[0].insert_text == "a + b"
        await client.shutdown_session()
        assert proc.wait(5) == 0
        await client.stop()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_fix_prints_the_repaired_lines_and_says_what_it_fixed(tmp_path, capsys):
    path = tmp_path / "slip.py"
    path.write_text("def add(a, b):\n    retrun a + b\n\n\nprint(add(1, 2))\n")
    assert dg_lsp(["fix", f"{path}:2", "--model", fake()]) == 0
    captured = capsys.readouterr()
    assert captured.out == "    return a + b\n" and "fixed a syntax error" in captured.err


def test_fix_of_working_code_changes_nothing_and_exits_1(src, capsys):
    assert dg_lsp(["fix", f"{src}:4-5", "--model", fake()]) == 1
    assert "nothing to fix" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "place", "expected"),
    [
        ("def add(a, b):\n    \n", "2:5", "return a + b"),
        (  # the README's demo
            "import os\n\ndef list_python_files(root):\n    result = []\n    for dirpath, _, names in os.walk(root):\n"
            '        for name in names:\n            if name.endswith(".py"):\n                \n    return result\n',
            "8:17",
            "result.append(name)",
        ),
        # the README's: the line the code below needs (it reads `acc`, which nothing binds), opened for the model
        ("def total(xs):\n    \n    for x in xs:\n        acc += x\n    return acc\n", "2:5", "acc = 0"),
    ],
)
def test_the_embedded_model_completes_the_demos(tmp_path, capsys, text, place, expected):
    # the real model and an explicit request (its wide beam, re-ranked by the next line), as `dg-lsp complete` runs
    path = tmp_path / "demo.py"
    path.write_text(text)
    assert cli.main(["complete", f"{path}:{place}"]) == 0
    assert capsys.readouterr().out.strip() == expected


def test_the_embedded_model_rewrites_the_demos_slip(tmp_path, capsys):
    # the README's `dg-lsp rewrite slip.py:2`: the denoiser writes the word it doubts afresh, the rest pinned
    path = tmp_path / "slip.py"
    path.write_text("def add(a, b):\n    retrun a + b\n")
    assert cli.main(["rewrite", f"{path}:2"]) == 0
    assert capsys.readouterr().out == "    return a + b\n"

"""The VS Code extension (editors/vscode): its node tests, and its settings contract with the server.

* `test_node_tests` builds the extension (tsc and the esbuild bundle) and runs its `node --test` suite (unit tests of
  the pure parts, the bundle, and the protocol tests that drive the real server on the tests' engine,
  tests/fake_server.py, over stdio with VS Code's client capabilities). It needs
  `node_modules` (run `npm ci` in editors/vscode); without it the test is skipped and the slow test below does it.
* `test_npm_ci_build_lint_package` (slow) runs the whole pipeline from a clean install: npm ci, compile, lint,
  tests, and `vsce package` into a .vsix.
* `test_contributed_settings_match_the_server` needs no node: package.json's `dg.*` settings must be exactly the
  server's settings (names, defaults, and the choices of every enumerated setting), so the editor never sends a key
  the server rejects; `test_offered_choices_are_accepted_and_others_rejected` gives each choice to the server's parser.
* `test_what_the_extension_sends_the_server_applies` runs the compiled extension's settings mapping on a non-default
  value for every setting and checks the server's parser ends up with exactly those values.
* `test_readme_settings_table_matches_the_server`: the extension README's settings table documents every server
  setting with the server's default.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest

from dg_lsp import settings as settings_mod

REPO = Path(__file__).resolve().parents[1]
EXT = REPO / "editors" / "vscode"
NODE = shutil.which("node")
NPM = shutil.which("npm")

CLIENT_ONLY = {"server.path", "server.args", "server.python", "server.maxRestarts", "trace.server"}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # The protocol tests run tests/fake_server.py with this interpreter (and find an installed dg-lsp next to it).
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["DG_PYTHON"] = sys.executable
    env.pop("NODE_OPTIONS", None)
    return env


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=EXT, env=_env(), capture_output=True, text=True, timeout=timeout)


def _compile() -> Path:
    compiled = _run([NPM, "run", "build"], 180)  # tsc to out/ (the tests) and the esbuild bundle (main)
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    return EXT / "out" / "src"


def _node_tests() -> tuple[int, int, str]:
    files = sorted(str(p.relative_to(EXT)) for p in (_compile() / "test").glob("*.test.js"))
    assert files, "no compiled tests"
    result = _run([NODE, "--test", *files], 240)
    out = result.stdout + result.stderr
    passed = re.search(r"^# pass (\d+)", out, re.M)
    failed = re.search(r"^# fail (\d+)", out, re.M)
    assert result.returncode == 0 and failed and failed.group(1) == "0", out[-6000:]
    return int(passed.group(1)) if passed else 0, int(failed.group(1)), out


def _need_node_modules() -> None:
    if not (EXT / "node_modules").is_dir():
        pytest.skip("editors/vscode/node_modules missing: run `npm ci` there (or the slow test does it)")


@pytest.mark.skipif(NODE is None or NPM is None, reason="node/npm not installed")
def test_node_tests() -> None:
    _need_node_modules()
    passed, failed, out = _node_tests()
    assert passed >= 30, out[-3000:]


@pytest.mark.slow
@pytest.mark.skipif(NODE is None or NPM is None, reason="node/npm not installed")
def test_npm_ci_build_lint_package() -> None:
    ci = _run([NPM, "ci", "--no-audit", "--no-fund"], 600)
    assert ci.returncode == 0, ci.stdout[-3000:] + ci.stderr[-3000:]
    lint = _run([NPM, "run", "lint"], 180)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    _node_tests()
    for old in EXT.glob("*.vsix"):
        old.unlink()
    pkg = _run([NPM, "exec", "--", "vsce", "package"], 300)
    assert pkg.returncode == 0, pkg.stdout[-3000:] + pkg.stderr[-3000:]
    vsix = list(EXT.glob("*.vsix"))
    assert len(vsix) == 1 and vsix[0].stat().st_size > 10_000


def _flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(value, dict) and key != "enable":
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _contributed() -> dict[str, dict[str, Any]]:
    """package.json's `dg.*` settings the extension sends to the server (client-only ones left out), by server key."""
    props = json.loads((EXT / "package.json").read_text())["contributes"]["configuration"]["properties"]
    return {k.removeprefix("dg."): v for k, v in props.items() if k.removeprefix("dg.") not in CLIENT_ONLY}


def test_contributed_settings_match_the_server() -> None:
    server = _flatten(settings_mod.to_json(settings_mod.Settings()))
    contributed = _contributed()
    assert set(contributed) == set(server), (
        f"only in package.json: {sorted(set(contributed) - set(server))}; "
        f"only in the server: {sorted(set(server) - set(contributed))}"
    )
    for key, default in server.items():
        offered = contributed[key].get("default")
        assert offered == default, f"dg.{key}: package.json {offered!r} != server {default!r}"
    # Every choice the server accepts is offered, and nothing else.
    hints = typing.get_type_hints(settings_mod.Settings)
    for field in dataclasses.fields(settings_mod.Settings):
        choices = [a for a in typing.get_args(hints[field.name]) if a is not type(None)]
        if typing.get_origin(hints[field.name]) is typing.Literal:
            key = settings_mod.camel(field.name)
            assert set(contributed[key].get("enum", [])) == set(choices), key


def test_offered_choices_are_accepted_and_others_rejected() -> None:
    """The enums in package.json, given to the server's own settings parser: each value is accepted as is, and a
    value outside them is rejected (so the server really enforces the choice the editor offers)."""
    enums = {k: v["enum"] for k, v in _contributed().items() if "enum" in v}
    assert {"device", "quantize", "decoding", "logLevel"} <= set(enums)

    def nested(key: str, value: Any) -> dict[str, Any]:  # "remote.format" -> {"remote": {"format": value}}
        head, _, rest = key.partition(".")
        return {head: nested(rest, value)} if rest else {key: value}

    for key, values in enums.items():
        for value in values:
            parsed, bad = settings_mod.parse_settings(nested(key, value))
            assert bad == [] and _flatten(settings_mod.to_json(parsed))[key] == value, (key, value, bad)
        _, bad = settings_mod.parse_settings(nested(key, "not-one-of-them"))
        assert bad == [key], (key, bad)


def _not_default(prop: dict[str, Any]) -> Any:
    """A valid value other than the default, from the setting's JSON schema in package.json."""
    default, kinds = prop.get("default"), prop["type"] if isinstance(prop["type"], list) else [prop["type"]]
    if "enum" in prop:
        return next(v for v in prop["enum"] if v != default)
    if "boolean" in kinds:
        return not default
    if "object" in kinds:
        return {"python": False, "markdown": True}
    if "integer" in kinds or "number" in kinds:
        lo, hi = prop.get("minimum", 0), prop.get("maximum", 100)
        value = (lo + hi) / 2 if default is None else (default + hi) / 2
        return round(value) if "integer" in kinds else value
    assert "string" in kinds, prop
    return "/models/dg-test"


@pytest.mark.skipif(NODE is None or NPM is None, reason="node/npm not installed")
def test_what_the_extension_sends_the_server_applies() -> None:
    """The compiled extension's settings mapping (`toServerSettings`, what it puts in initializationOptions and
    didChangeConfiguration), fed a user value other than the default for every contributed server setting: the
    server's parser accepts all of it and ends up with exactly those values (a setting the extension forgot to map,
    or mapped under another name or shape, fails here)."""
    _need_node_modules()
    settings_js = _compile() / "settings.js"
    contributed = _contributed()
    chosen = {key: _not_default(prop) for key, prop in contributed.items()}
    defaults = {key: prop.get("default") for key, prop in contributed.items()}
    script = (
        "const s = require(process.argv[1]); const [chosen, defaults] = JSON.parse(process.argv[2]);"
        "console.log(JSON.stringify(s.toServerSettings((k) => ({defaultValue: defaults[k], globalValue: chosen[k]}))));"
    )
    done = _run([NODE, "-e", script, str(settings_js), json.dumps([chosen, defaults])], 60)
    assert done.returncode == 0, done.stdout + done.stderr
    sent = json.loads(done.stdout)
    assert sent["warnings"] == [], sent
    parsed, bad = settings_mod.parse_settings(sent["settings"])
    assert bad == [], (bad, sent["settings"])
    assert _flatten(settings_mod.to_json(parsed)) == chosen


def _readme_value(text: str) -> Any:
    text = text.strip().strip("`").strip('"')
    words = {"null": None, "embedded": None, "true": True, "false": False, "{}": {}}
    if text in words:
        return words[text]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def test_readme_settings_table_matches_the_server() -> None:
    """The extension README's settings table documents every server setting with the server's default. Rows like
    `| `dg.context.maxPromptTokens`, `.suffixShare` | 480, 0.25 | ... |`: names and defaults pair up in order."""
    server = _flatten(settings_mod.to_json(settings_mod.Settings()))
    documented: dict[str, Any] = {}
    for line in (EXT / "README.md").read_text().splitlines():
        if not line.startswith("| `dg."):
            continue
        names_cell, defaults_cell = line.split("|")[1:3]
        names = re.findall(r"`(\.?[\w.]+)`", names_cell)
        first = names[0].removeprefix("dg.")
        parent = first.rsplit(".", 1)[0] if "." in first else ""
        keys = [n.removeprefix("dg.") if n.startswith("dg.") else parent + n for n in names]
        if all(k in CLIENT_ONLY for k in keys):
            continue
        defaults = [d for d in re.split(r",\s*|\s+/\s+", defaults_cell.strip()) if d]
        assert len(defaults) == len(keys), f"README row {keys}: {len(defaults)} defaults for {len(keys)} settings"
        documented.update(zip(keys, map(_readme_value, defaults)))
    missing = sorted(set(server) - set(documented))
    assert not missing, f"settings the README does not document: {missing}"
    wrong = {k: (documented[k], server[k]) for k in server if documented[k] != server[k]}
    assert not wrong, f"README default != server default: {wrong}"

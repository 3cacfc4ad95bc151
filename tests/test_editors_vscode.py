"""The VS Code extension (editors/vscode): its node tests, and its settings contract with the server.

* `test_node_tests` compiles the extension and runs its `node --test` suite (unit tests of the pure parts, plus the
  protocol tests that drive the stub and the real `dg-lsp` over stdio with VS Code's client capabilities). It needs
  `node_modules` (run `npm ci` in editors/vscode); without it the test is skipped and the slow test below does it.
* `test_npm_ci_build_lint_package` (slow) runs the whole pipeline from a clean install: npm ci, compile, lint,
  tests, and `vsce package` into a .vsix.
* `test_contributed_settings_match_the_server` needs no node: package.json's `dg.*` settings must be exactly the
  server's settings (names and defaults), so the editor never sends a key the server rejects.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
EXT = REPO / "editors" / "vscode"
NODE = shutil.which("node")
NPM = shutil.which("npm")

CLIENT_ONLY = {"server.path", "server.args", "server.python", "server.maxRestarts", "trace.server"}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # The protocol tests find the real dg-lsp in the running interpreter's environment, and use it for the stub.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["DG_PYTHON"] = sys.executable
    env.pop("NODE_OPTIONS", None)
    return env


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=EXT, env=_env(), capture_output=True, text=True, timeout=timeout)


def _node_tests() -> tuple[int, int, str]:
    compiled = _run([NPM, "run", "compile"], 180)
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    files = sorted(str(p.relative_to(EXT)) for p in (EXT / "out" / "src" / "test").glob("*.test.js"))
    assert files, "no compiled tests"
    result = _run([NODE, "--test", *files], 240)
    out = result.stdout + result.stderr
    passed = re.search(r"^# pass (\d+)", out, re.M)
    failed = re.search(r"^# fail (\d+)", out, re.M)
    assert result.returncode == 0 and failed and failed.group(1) == "0", out[-6000:]
    return int(passed.group(1)) if passed else 0, int(failed.group(1)), out


@pytest.mark.skipif(NODE is None or NPM is None, reason="node/npm not installed")
def test_node_tests() -> None:
    if not (EXT / "node_modules").is_dir():
        pytest.skip("editors/vscode/node_modules missing: run `npm ci` there (or the slow test does it)")
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


def test_contributed_settings_match_the_server() -> None:
    settings_mod = pytest.importorskip("dg_lsp.settings")
    server = _flatten(settings_mod.to_json(settings_mod.Settings()))
    props = json.loads((EXT / "package.json").read_text())["contributes"]["configuration"]["properties"]
    contributed = {k.removeprefix("dg."): v for k, v in props.items() if k.removeprefix("dg.") not in CLIENT_ONLY}
    assert set(contributed) == set(server), (
        f"only in package.json: {sorted(set(contributed) - set(server))}; "
        f"only in the server: {sorted(set(server) - set(contributed))}"
    )
    for key, default in server.items():
        assert contributed[key].get("default") == default, f"dg.{key}: package.json {contributed[key].get('default')!r} != server {default!r}"
    # Enumerations the server checks must be offered as such.
    for key in ("device", "quantize", "logLevel"):
        field = next(f for f in settings_mod.dataclasses.fields(settings_mod.Settings) if settings_mod.camel(f.name) == key)
        allowed = set(field.type.__args__) if hasattr(field.type, "__args__") else None
        if allowed is None:  # `from __future__ import annotations`: the type is a string like "Literal['a', 'b']"
            allowed = set(re.findall(r"'([^']+)'", str(field.type)))
        assert set(contributed[key]["enum"]) == allowed, key
    # And the mapping in the extension covers exactly these keys (settings.ts SERVER_SETTINGS).
    ts = (EXT / "src" / "settings.ts").read_text()
    block = ts[ts.index("export const SERVER_SETTINGS = {") : ts.index("} as const;")]
    mapped = set(re.findall(r"^\s+'?([\w.]+)'?:", block, re.M))
    assert mapped == set(server), sorted(mapped ^ set(server))

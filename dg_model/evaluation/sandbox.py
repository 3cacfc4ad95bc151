"""Run untrusted generated Python in a fresh sandboxed interpreter: `run_program(source, timeout) -> ExecResult`.

`python -I -S -c RUNNER PATH` in a scratch working directory with a minimal environment, its own process group (a
timeout kills whatever it spawned), CPU / address-space / file-size rlimits, no core dumps, and os / shutil /
subprocess functions that destroy or spawn things disabled before the program runs. Passed iff it exits 0 in time.
Model code is never executed in the calling process.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass


@dataclass
class ExecResult:
    passed: bool
    result: str  # "passed" | "timed out" | "failed: <last stderr line>"
    ms: float


# Runs in the child (`python -I -S -c RUNNER PROGRAM_PATH`): limits first, then the guard, then the program.
_RUNNER = r"""
import builtins, os, resource, sys
_exit, _path = os._exit, sys.argv[1]
def _lim(which, value):
    try:
        resource.setrlimit(which, (value, value))
    except (ValueError, OSError):
        pass
_lim(resource.RLIMIT_AS, {memory})
_lim(resource.RLIMIT_CPU, {cpu})
_lim(resource.RLIMIT_FSIZE, {fsize})
_lim(resource.RLIMIT_CORE, 0)
with open(_path, encoding="utf-8") as _fh:
    _source = _fh.read()
import shutil, subprocess
for _mod, _names in (
    (os, "kill killpg fork forkpty system popen execv execve execvp execvpe spawnv spawnve spawnvp spawnvpe remove "
         "unlink rmdir removedirs rename renames replace truncate ftruncate chmod fchmod lchmod chown fchown lchown "
         "chroot putenv unsetenv setuid setgid setsid _exit"),
    (shutil, "rmtree move chown"),
    (subprocess, "Popen run call check_call check_output getoutput getstatusoutput"),
):
    for _name in _names.split():
        if hasattr(_mod, _name):
            setattr(_mod, _name, None)
try:
    exec(compile(_source, "<humaneval>", "exec"), {{"__name__": "__main__", "__builtins__": builtins}})
except SystemExit:
    sys.stderr.write("SystemExit raised by the program\n")
    sys.stderr.flush()
    _exit(3)
"""


def run_program(program: str, timeout: float = 3.0, memory_mb: int = 1024) -> ExecResult:
    """Run `program` in a fresh sandboxed interpreter; passed iff it finishes within `timeout` s with exit code 0."""
    runner = _RUNNER.format(memory=memory_mb << 20, cpu=max(1, math.ceil(timeout)) + 1, fsize=16 << 20)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": "1",
        "LC_ALL": "C.UTF-8",
        "PYTHONIOENCODING": "utf-8",
    }
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dg-humaneval-") as tmp:
        path = os.path.join(tmp, "program.py")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(program)
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", runner, path],
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: a timeout kills whatever it left behind too
        )
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.communicate()
            return ExecResult(False, "timed out", (time.perf_counter() - t0) * 1000)
        finally:
            if proc.poll() is None:  # interrupted (KeyboardInterrupt) while waiting
                _kill_group(proc)
    ms = (time.perf_counter() - t0) * 1000
    if proc.returncode == 0:
        return ExecResult(True, "passed", ms)
    if proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return ExecResult(False, "timed out", ms)
    tail = [line for line in err.decode("utf-8", "replace").splitlines() if line.strip()]
    return ExecResult(False, "failed: " + (tail[-1][:300] if tail else f"exit code {proc.returncode}"), ms)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()

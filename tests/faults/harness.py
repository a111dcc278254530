"""Fault injection for the long jobs: run a ``llavidal`` command in its own process group, SIGKILL it (the whole
group: DataLoader workers too) once its output shows that it is part-way through, at a seeded point, and run the
same command again; or run it under a file-size limit that stands in for a full disk."""
from __future__ import annotations

import os
import random
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from helpers_train import subprocess_env

PYTHON = sys.executable


def llavidal(*args) -> list[str]:
    return [PYTHON, "-m", "llavidal.cli", *map(str, args)]


def run(cmd: list[str], cwd: Path, timeout: float = 300, fsize: int | None = None) -> subprocess.CompletedProcess:
    def limit():  # a full disk: writes past `fsize` bytes per file fail with EFBIG (SIGXFSZ ignored, not fatal)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run(cmd, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout,
                          preexec_fn=limit if fsize is not None else None)


def kill_when(cmd: list[str], cwd: Path, ready: Callable[[], bool], seed: int, max_delay: float = 0.3,
              timeout: float = 300) -> bool:
    """Start ``cmd``; once ``ready()`` holds, wait a seeded random delay in [0, max_delay] and SIGKILL its process
    group. Returns False when the command finished before that (then nothing was killed)."""
    delay = random.Random(seed).uniform(0, max_delay)
    proc = subprocess.Popen(cmd, cwd=cwd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    start = time.monotonic()
    try:
        while proc.poll() is None:
            if ready():
                time.sleep(delay)
                if proc.poll() is not None:
                    return False
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"{cmd} never reached its kill point")
            time.sleep(0.01)
        return False
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def kill_and_rerun(cmd: list[str], cwd: Path, ready: Callable[[], bool], seed: int, max_delay: float = 0.3,
                   timeout: float = 300, finished: Path | None = None, expect: int = 0) -> subprocess.CompletedProcess:
    """The scaffold of every kill test: :func:`kill_when` (which must land before the command ends; and when
    ``finished`` is given, the file that only a finished run writes must be absent), then the same command again to
    its end, which must exit with ``expect``. Returns that second run, for the test to compare its outputs with an
    uninterrupted run's."""
    assert kill_when(cmd, cwd, ready, seed, max_delay, timeout), f"{cmd[3:5]}: finished before the kill point"
    assert finished is None or not finished.exists(), f"{finished} exists: killed after the run finished"
    proc = run(cmd, cwd, timeout)
    assert proc.returncode == expect, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def tree(root: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Relative path -> bytes of every file under ``root`` (names containing any of ``skip`` left out)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not any(s in str(p.relative_to(root)) for s in skip)}

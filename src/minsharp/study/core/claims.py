"""Which worker runs which run: advisory file locks in the shared study directory.

Several workers can run one study at once: the ranks of ``torchrun --nproc_per_node=N -m
minsharp study …``, or independent ``minsharp study`` processes, on one machine or several
sharing the directory. Before a run starts, its worker takes an exclusive, non-blocking
``flock`` on ``DIR/runs/<run-id>/.lock`` and holds it until the run's ``result.json`` is
written; a worker that finds the lock taken skips the run. The operating system releases a
lock when its holder's process ends in any way (exit, exception, ``SIGKILL``, a crash), so a
run whose worker died is free again at once, and the next worker that reaches it (or the
next resume) redoes it. No heartbeat, no timeout, no stale-lock guessing.

The same kind of lock, taken blocking, guards the read-check-write of ``DIR/study.json``.

Locks need POSIX ``fcntl`` (Linux, macOS); without it (Windows) every claim succeeds, so run
one worker per study directory there. Across machines they need a file system whose locks
the machines share; check yours (the tests cover workers on one machine only).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks (see the module docstring)
    fcntl = None  # type: ignore[assignment]

#: The lock file inside a run directory and inside the study directory.
LOCK_FILE = ".lock"


def holder_text(lock: Path) -> str:
    """Who holds (or last held) ``lock``, as ``host pid N``, from what the holder wrote."""
    try:
        holder = json.loads(lock.read_text())
        return f"{holder['host']} pid {holder['pid']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another worker"


@contextmanager
def claimed(directory: Path) -> Iterator[bool]:
    """Try to claim the run in ``directory``; yields whether this worker holds it.

    The claim is held until the ``with`` block ends, and released by the operating system
    if the process dies first.
    """
    directory.mkdir(parents=True, exist_ok=True)
    with _locked(directory / LOCK_FILE, blocking=False) as held:
        yield held


@contextmanager
def exclusive(directory: Path) -> Iterator[None]:
    """Hold the lock of ``directory`` itself, waiting for other workers to release it."""
    directory.mkdir(parents=True, exist_ok=True)
    with _locked(directory / LOCK_FILE, blocking=True):
        yield


@contextmanager
def _locked(path: Path, *, blocking: bool) -> Iterator[bool]:
    if fcntl is None:
        yield True
        return
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        # For people and messages only: the lock itself is what excludes other workers.
        holder = json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode()
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, holder, 0)
        try:
            yield True
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)

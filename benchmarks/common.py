"""Shared pieces of the benchmark scripts: machine header, timing, atomic output, MNIST.

The scripts import this module by name (``import common``): run them as
``python benchmarks/<script>.py``, which puts this folder on ``sys.path``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

import minsharp
from minsharp.data import load_mnist_split

BENCHMARKS_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCHMARKS_DIR / "results"
#: The shared offline copy of the MNIST test split: ``../shared/data/mnist`` from the repo root.
DEFAULT_MNIST_DIR = BENCHMARKS_DIR.parents[1] / "shared" / "data" / "mnist"
#: Threads used by every benchmark (the machine the results were first taken on has 2 cores).
THREADS = 2
#: Header line of ``--quick`` runs. They use one thread: with two threads on a two-core
#: machine, one busy process elsewhere stalls every parallel operation for a scheduler time
#: slice, which made a 0.05 s smoke test take 13 s.
QUICK_NOTE = (
    "**QUICK MODE: tiny sizes, 1 thread, no contention filtering: a smoke test of the "
    "script, not a result**"
)


def base_parser(description: str, default_output: Path) -> argparse.ArgumentParser:
    """Command-line options every benchmark accepts: ``--quick``, ``--output``, ``--mnist``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes that finish in seconds (a smoke test of the script, not a result)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=default_output,
        help=f"markdown file to write (default: {default_output})",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to this long for other processes to leave the CPUs idle",
    )
    parser.add_argument(
        "--mnist",
        type=Path,
        default=DEFAULT_MNIST_DIR,
        help=f"folder with the MNIST test-split IDX files (default: {DEFAULT_MNIST_DIR})",
    )
    return parser


class OtherLoad:
    """CPU time used by *other* processes since creation, from ``/proc`` (Linux only).

    Timings with ``THREADS`` threads on a machine with few cores are only meaningful when no
    other process competes for them: a thread that waits for a busy core stalls every
    parallel operation. The benchmarks report this figure next to their results.
    """

    def __init__(self) -> None:
        self.available = Path("/proc/stat").is_file() and Path("/proc/self/stat").is_file()
        self._start = self._sample()

    @staticmethod
    def _busy_ticks() -> tuple[int, int]:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
        machine = user + nice + system + irq + softirq + steal
        # /proc/self/stat: the command name may hold spaces; fields after ")" are fixed.
        own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return machine, int(own[11]) + int(own[12])  # utime + stime

    def _sample(self) -> tuple[float, int, int]:
        if not self.available:
            return time.perf_counter(), 0, 0
        return (time.perf_counter(), *self._busy_ticks())

    def cores(self) -> float | None:
        """Average number of cores kept busy by other processes since creation."""
        if not self.available:
            return None
        start_time, start_machine, start_own = self._start
        now, machine, own = self._sample()
        ticks = (machine - start_machine) - (own - start_own)
        elapsed = max(now - start_time, 1e-9)
        return max(ticks, 0) / os.sysconf("SC_CLK_TCK") / elapsed

    def describe(self) -> str:
        """A note for the results header."""
        cores = self.cores()
        if cores is None:
            return "CPU use by other processes during the run: unknown (no /proc)"
        return (
            f"CPU use by other processes over the whole run: {cores:.2f} cores on average "
            f"(of {os.cpu_count()}); the tables give the load during the timed calls they use"
        )


def wait_until_quiet(max_wait_s: float, window_s: float = 5.0, threshold: float = 0.1) -> str:
    """Wait up to ``max_wait_s`` for other processes to leave the CPUs idle.

    Idle means below ``threshold`` cores on average over a ``window_s`` window. Returns a note
    saying how long it waited and whether the machine became quiet.
    """
    start = time.perf_counter()
    while True:
        monitor = OtherLoad()
        if not monitor.available:
            return "waited for a quiet machine: not possible (no /proc)"
        time.sleep(window_s)
        cores = monitor.cores() or 0.0
        waited = time.perf_counter() - start
        if cores < threshold:
            return f"waited {waited:.0f} s for a quiet machine (other load {cores:.2f} cores)"
        if waited >= max_wait_s:
            return (
                f"machine not quiet after {waited:.0f} s (other load {cores:.2f} cores); ran anyway"
            )


def setup_torch(threads: int = THREADS, seed: int = 0) -> None:
    """Fix the intra-op thread count and the random seed."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)


def mnist_test_images(directory: Path, n: int) -> tuple[Tensor, Tensor]:
    """The first ``n`` MNIST test images (N, 1, 28, 28), normalised to [−1, 1], and labels."""
    images, labels = load_mnist_split(directory, "test")
    if n > images.shape[0]:
        raise SystemExit(f"asked for {n} MNIST test images; {directory} holds {images.shape[0]}.")
    return images[:n].contiguous(), labels[:n].contiguous()


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo``, or what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def minsharp_source() -> str:
    """Which minsharp the benchmark imported: its folder and git revision, if any."""
    package = Path(minsharp.__file__).resolve().parent
    note = f"minsharp imported from {package}"
    try:
        revision = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=package,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "."],
            cwd=package,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return note + " (not a git checkout)"
    changed = [line[3:] for line in changed if line.strip()]
    state = f"uncommitted changes in {', '.join(changed)}" if changed else "clean"
    return f"{note}, git {revision} ({state})"


def machine_header(title: str, dtype: str, extra: Sequence[str] = ()) -> str:
    """Markdown title plus a bullet list describing machine, software and run."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    lines = [
        f"# {title}",
        "",
        f"- machine: {cpu_model()}, {os.cpu_count()} logical CPUs, {platform.system()} "
        f"{platform.release()}",
        f"- threads: {torch.get_num_threads()} (torch.set_num_threads)",
        f"- torch {torch.__version__}, Python {platform.python_version()}, device: CPU",
        f"- {minsharp_source()}",
        f"- dtype: {dtype}",
        f"- memory allocator: {allocator_note()}",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
    ]
    if load is not None:
        lines.append(
            "- load average at start (1/5/15 min): " + " / ".join(f"{x:.2f}" for x in load)
        )
    lines += [f"- {item}" for item in extra]
    return "\n".join(lines) + "\n"


def allocator_note() -> str:
    """The malloc tuning in force: it decides whether freed tensors' pages go back to the OS."""
    tuning = {
        name: value
        for name, value in os.environ.items()
        if name.startswith("MALLOC_") or name == "LD_PRELOAD"
    }
    if not tuning:
        return "glibc defaults (freed large blocks are returned to the OS: page faults anew)"
    return "tuned: " + ", ".join(f"{name}={value}" for name, value in sorted(tuning.items()))


def load_note() -> str:
    """One line with the current load average (to spot a busy machine during the run)."""
    if not hasattr(os, "getloadavg"):
        return ""
    return "load average at end (1/5/15 min): " + " / ".join(f"{x:.2f}" for x in os.getloadavg())


#: Other processes may use at most this many cores during a timed call for it to count.
QUIET_CORES = 0.2


def time_once(function: Callable[[], object]) -> float:
    """Wall time of one call, in seconds."""
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


@dataclass
class Timing:
    """Wall times of repeated calls, split by whether other processes competed for the CPUs."""

    kept: list[float] = field(default_factory=list)
    """Times of the calls made while the machine was otherwise quiet (or all, unfiltered)."""
    discarded: list[float] = field(default_factory=list)
    """Times of the calls during which other processes used more than the allowed load."""
    kept_load: list[float] = field(default_factory=list)
    """Load from other processes (cores) during each kept call."""
    discarded_load: list[float] = field(default_factory=list)
    """Load from other processes (cores) during each discarded call."""

    @property
    def median(self) -> float:
        """Median of the kept times (of all times if none was kept)."""
        return statistics.median(self.kept or self.discarded)

    @property
    def runs(self) -> str:
        """Number of calls, as ``"kept of made"`` when some were discarded."""
        made = len(self.kept) + len(self.discarded)
        return str(made) if not self.discarded else f"{len(self.kept)} of {made}"

    @property
    def max_other_cores(self) -> float:
        """The largest other-process load during a call the median uses (0 if unknown)."""
        return max(self.kept_load or self.discarded_load, default=0.0)

    def add(self, seconds: float, other: float | None, max_other_cores: float | None) -> None:
        """Record one call; keep it unless other processes used more than allowed."""
        contended = max_other_cores is not None and other is not None and other > max_other_cores
        if contended:
            self.discarded.append(seconds)
            self.discarded_load.append(other or 0.0)
        else:
            self.kept.append(seconds)
            self.kept_load.append(other or 0.0)


def timed_calls(
    function: Callable[[], object],
    *,
    repeats: int,
    warmup: int = 1,
    budget_s: float | None = None,
    min_repeats: int = 1,
    max_other_cores: float | None = QUIET_CORES,
    max_attempts: int | None = None,
    max_total_s: float | None = None,
) -> Timing:
    """Time ``repeats`` calls of ``function`` after ``warmup`` untimed ones.

    A call during which other processes kept more than ``max_other_cores`` cores busy is
    discarded and made again, up to ``max_attempts`` calls in all (default ``5 × repeats``);
    ``None`` keeps every call. With ``budget_s``, stop once the kept calls have used that many
    seconds and at least ``min_repeats`` were kept. With ``max_total_s``, also stop once all
    calls together (kept or discarded) have used that many seconds.
    """
    for _ in range(warmup):
        function()
    attempts = max_attempts if max_attempts is not None else 5 * repeats
    timing = Timing()
    while len(timing.kept) < repeats and len(timing.kept) + len(timing.discarded) < attempts:
        monitor = OtherLoad()
        seconds = time_once(function)
        timing.add(seconds, monitor.cores(), max_other_cores)
        if (
            budget_s is not None
            and len(timing.kept) >= min_repeats
            and sum(timing.kept) >= budget_s
        ):
            break
        if max_total_s is not None and sum(timing.kept) + sum(timing.discarded) >= max_total_s:
            break
    return timing


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table; cells are converted with ``str``."""
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
    ]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        os.fchmod(descriptor, 0o644)
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def seconds(value: float) -> str:
    """Format a duration in seconds with three significant digits."""
    return f"{value:.3g}"


# ---------------------------------------------------------------------------------------------
# Peak memory, optional peers, verdicts, plots
# ---------------------------------------------------------------------------------------------

#: How peak memory is measured, for the notes of the tables that report it.
MEMORY_METHOD = (
    "peak memory = the process's peak resident set size during the call (VmHWM, reset just "
    "before it through /proc/self/clear_refs) minus its resident set size just before the "
    "call, after glibc's malloc_trim; it counts every allocation that reached memory (torch "
    "CPU tensors, peers' own buffers), which tracemalloc does not see"
)


def _resident_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _release_free_memory() -> None:
    """Give freed heap memory back to the OS (glibc), so the baseline is what is in use."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_memory_mib(function: Callable[[], object]) -> tuple[object, float | None]:
    """Call ``function`` once; its result and its peak extra resident memory in MiB.

    See :data:`MEMORY_METHOD`. None where ``/proc/self/clear_refs`` cannot reset the peak
    (not Linux, or not permitted).
    """
    _release_free_memory()
    before = _resident_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return function(), None
    result = function()
    peak = _resident_kib("VmHWM")
    if before is None or peak is None:
        return result, None
    return result, max(peak - before, 0) / 1024


def optional_module(name: str) -> tuple[object | None, str]:
    """Import an optional benchmark dependency: the module, or None and why not."""
    import importlib
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(name), ""
    except Exception as error:  # any failure to import a peer: report it, do not crash
        return None, f"not installed or fails to import ({type(error).__name__}: {error})"


def verdict(passed: bool | None, unknown: str = "n/a") -> str:
    """``PASS`` / ``MISS`` for a bar, or the reason it could not be judged."""
    if passed is None:
        return unknown
    return "PASS" if passed else "MISS"


def save_figure(figure: object, markdown: Path, suffix: str) -> Path:
    """Save a matplotlib figure next to ``markdown`` as ``<stem>_<suffix>.png``; its path."""
    path = Path(markdown).with_name(f"{Path(markdown).stem}_{suffix}.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")  # type: ignore[attr-defined]
    import matplotlib.pyplot as plt

    plt.close(figure)  # type: ignore[arg-type]
    return path


def pyplot() -> object:
    """The pyplot module of matplotlib, with the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt

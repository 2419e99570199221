"""Shared pieces of the benchmark scripts: options, run notes, data, models, timing and output.

Each script holds only its own experiment: it parses its options with :func:`base_parser`,
starts a :class:`Run` (threads, quiet wait, clocks), measures, and ends with
:meth:`Run.finish`, which writes the machine header, the notes every results file carries and
the script's tables atomically. ``--quick`` runs use one thread and no contention filter
(:class:`BaseSettings`).

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
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import minsharp
from minsharp.data import load_mnist_split
from minsharp.models import mlp
from minsharp.training import TrainingConfig, TrainingHistory, train_classifier

BENCHMARKS_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCHMARKS_DIR / "results"
#: The shared offline copy of the MNIST test split: ``../shared/data/mnist`` from the repo root.
DEFAULT_MNIST_DIR = BENCHMARKS_DIR.parents[1] / "shared" / "data" / "mnist"
#: Threads used by every benchmark (the machine the results were first taken on has 2 cores).
THREADS = 2
#: Other processes may use at most this many cores during a timed call for it to count.
QUIET_CORES = 0.2
#: Header line of ``--quick`` runs. They use one thread: with two threads on a two-core
#: machine, one busy process elsewhere stalls every parallel operation for a scheduler time
#: slice, which made a 0.05 s smoke test take 13 s.
QUICK_NOTE = (
    "**QUICK MODE: tiny sizes, 1 thread, no contention filtering: a smoke test of the "
    "script, not a result**"
)


# ---------------------------------------------------------------------------------------------
# Options, settings and the run
# ---------------------------------------------------------------------------------------------


def base_parser(doc: str, default_output: Path) -> argparse.ArgumentParser:
    """Options every benchmark accepts; the description is the first line of ``doc``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
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


@dataclass(frozen=True, kw_only=True)
class BaseSettings:
    """What every script's settings share: a full run, or a ``--quick`` smoke test.

    A full run uses :data:`THREADS` threads and discards timed calls during which other
    processes kept more than :data:`QUIET_CORES` cores busy; a quick run uses one thread and
    keeps every call (:data:`QUICK_NOTE` says so in its header).
    """

    quick: bool = False

    @property
    def threads(self) -> int:
        """Torch intra-op threads."""
        return 1 if self.quick else THREADS

    @property
    def max_other_cores(self) -> float | None:
        """The contention filter of the timed calls (None: keep every call)."""
        return None if self.quick else QUIET_CORES


class Run:
    """One run of a benchmark script, from its options to its results file.

    Creating it fixes the threads and the seed, waits for a quiet machine when
    ``--wait-quiet`` asks for it, then starts the clock, the load monitor and notes the load
    average at the start of the measurements.
    """

    def __init__(self, args: argparse.Namespace, threads: int) -> None:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        self.args = args
        self.quiet_note = wait_until_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
        self.start_load = os.getloadavg() if hasattr(os, "getloadavg") else None
        self.started = time.perf_counter()
        self.other_load = OtherLoad()

    def finish(self, title: str, dtype: str, notes: Sequence[str], body: str) -> int:
        """Write the header, the notes and ``body`` (the tables) to ``--output``; exit code."""
        notes = list(notes)
        if self.args.quick:
            notes.insert(0, QUICK_NOTE)
        elapsed = time.perf_counter() - self.started
        notes.append(f"total script time: {elapsed:.0f} s; {load_note()}")
        notes.append(self.other_load.describe())
        if self.quiet_note:
            notes.append(self.quiet_note)
        text = machine_header(title, dtype, notes, self.start_load) + "\n" + body
        write_atomically(self.args.output, text)
        print(f"wrote {self.args.output} in {elapsed:.0f} s", file=sys.stderr)
        return 0


# ---------------------------------------------------------------------------------------------
# Load from other processes
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# The header of every results file
# ---------------------------------------------------------------------------------------------


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


def machine_header(
    title: str,
    dtype: str,
    extra: Sequence[str] = (),
    start_load: Sequence[float] | None = None,
) -> str:
    """Markdown title plus a bullet list describing machine, software and run.

    ``start_load``: the load average when the measurements began (:class:`Run` takes it);
    without it the line says nothing about the start and is left out.
    """
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
    if start_load is not None:
        lines.append(
            "- load average at start (1/5/15 min): " + " / ".join(f"{x:.2f}" for x in start_load)
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


# ---------------------------------------------------------------------------------------------
# Data, models and training
# ---------------------------------------------------------------------------------------------


def mnist_test_images(directory: Path, n: int, crop: slice | None = None) -> tuple[Tensor, Tensor]:
    """The first ``n`` MNIST test images (N, 1, 28, 28), normalised to [−1, 1], and labels.

    ``crop`` keeps those pixel rows and columns (the quick modes' small images).
    """
    images, labels = load_mnist_split(directory, "test")
    if n > images.shape[0]:
        raise SystemExit(f"asked for {n} MNIST test images; {directory} holds {images.shape[0]}.")
    images = images[:n]
    if crop is not None:
        images = images[:, :, crop, crop]
    return images.contiguous(), labels[:n].contiguous()


def untrained(build: Callable[[], nn.Module], dtype: torch.dtype | None = None) -> nn.Module:
    """``build()`` right after ``torch.manual_seed(0)``, in ``dtype``, in eval mode."""
    torch.manual_seed(0)
    model = build()
    return (model if dtype is None else model.to(dtype)).eval()


def train_on_test_images(
    model: nn.Module, images: Tensor, labels: Tensor, indices: slice, config: TrainingConfig
) -> TrainingHistory:
    """``train_classifier`` on the test images ``indices``, in the model's dtype (left in eval).

    The scripts measure the first test images and train on later ones, never on those.
    """
    dtype = next(model.parameters()).dtype
    return train_classifier(model, images[indices].to(dtype), labels[indices], config)


def training_note(indices: slice, config: TrainingConfig, outcome: str = "") -> str:
    """The notes' line on the two states, ``init`` and ``trained`` (then ``: outcome``)."""
    return (
        f"states: `init` = torch.manual_seed(0); `trained` = then `train_classifier` on test "
        f"images {indices.start}..{indices.stop - 1} (SGD momentum {config.momentum}, weight "
        f"decay {config.weight_decay:g}, batch {config.batch_size}, lr {config.lr:g}/(1 + "
        f"{config.lr_decay:g} t), {config.epochs} epochs)" + (f": {outcome}" if outcome else "")
    )


def training_step(model: nn.Module, inputs: Tensor, labels: Tensor) -> Callable[[], None]:
    """One SGD iteration's gradient work on ``inputs``: the unit of the cost ratios.

    ``zero_grad``, forward, mean cross-entropy, ``.backward()``; the update is left out.
    """

    def step() -> None:
        model.zero_grad()
        F.cross_entropy(model(inputs), labels).backward()

    return step


def training_and_curvature(
    inputs: Tensor, hidden: Sequence[int], classes: int
) -> tuple[nn.Module, dict[str, Callable[[], object]]]:
    """An untrained ReLU MLP on flat ``inputs``, and three workloads on the same single batch.

    ``training``: ``zero_grad``, forward, mean cross-entropy on random labels, ``.backward()``
    (one SGD iteration before the update); ``trace`` and ``diagonal``: ours with default
    options, as a user calls them (the engine sizes its batches).
    """
    n = inputs.shape[0]
    torch.manual_seed(0)
    model = mlp(inputs.shape[1], list(hidden), classes)
    labels = torch.randint(0, classes, (n,))
    return model, {
        "training": training_step(model, inputs, labels),
        "trace": lambda: minsharp.hessian_trace(model, inputs),
        "diagonal": lambda: minsharp.hessian_diagonal(model, inputs),
    }


def scaled_descent(
    objective: Callable[[], Tensor], parameters: list[Tensor], steps: int, lr: float
) -> tuple[float, float]:
    """The Minimum Sharpness authors' minimisation, re-implemented here only.

    ``steps`` steps of ``torch.optim.SGD`` with the fixed step ``lr`` on ``objective()``
    divided by its value at the start (the scale-normalised objective of their code). Updates
    ``parameters`` in place; returns the seconds the steps took and the load from other
    processes (cores) meanwhile.
    """
    with torch.no_grad():
        scale = float(objective())
    optimizer = torch.optim.SGD(parameters, lr=lr)
    monitor = OtherLoad()
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = objective() / scale
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start, monitor.cores() or 0.0


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


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
    kept_cpu: list[float] = field(default_factory=list)
    """Process CPU times (all threads) of the kept calls, where recorded."""
    discarded_cpu: list[float] = field(default_factory=list)
    """Process CPU times of the discarded calls, where recorded."""
    result: object = None
    """What the last timed call returned."""

    @property
    def median(self) -> float:
        """Median of the kept times (of all times if none was kept)."""
        return statistics.median(self.kept or self.discarded)

    @property
    def cpu_median(self) -> float:
        """Median of the kept CPU times (of all CPU times if none was kept)."""
        return statistics.median(self.kept_cpu or self.discarded_cpu)

    @property
    def runs(self) -> str:
        """Number of calls, as ``"kept of made"`` when some were discarded."""
        made = len(self.kept) + len(self.discarded)
        return str(made) if not self.discarded else f"{len(self.kept)} of {made}"

    @property
    def max_other_cores(self) -> float:
        """The largest other-process load during a call the median uses (0 if unknown)."""
        return max(self.kept_load or self.discarded_load, default=0.0)

    def add(
        self,
        seconds: float,
        other: float | None,
        max_other_cores: float | None,
        cpu_seconds: float | None = None,
    ) -> None:
        """Record one call; keep it unless other processes used more than allowed."""
        contended = max_other_cores is not None and other is not None and other > max_other_cores
        times, loads, cpu = (
            (self.discarded, self.discarded_load, self.discarded_cpu)
            if contended
            else (self.kept, self.kept_load, self.kept_cpu)
        )
        times.append(seconds)
        loads.append(other or 0.0)
        if cpu_seconds is not None:
            cpu.append(cpu_seconds)

    def call(self, function: Callable[[], object], max_other_cores: float | None) -> None:
        """Time one call of ``function`` alone and record it, with its result."""
        self.result = None  # freed before the call, as if it were not kept
        monitor = OtherLoad()
        start = time.perf_counter()
        self.result = function()
        seconds = time.perf_counter() - start
        self.add(seconds, monitor.cores(), max_other_cores)


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
    calls together (kept or discarded) have used that many seconds. The timing's ``result``
    is what the last call returned.
    """
    for _ in range(warmup):
        function()
    attempts = max_attempts if max_attempts is not None else 5 * repeats
    timing = Timing()
    while len(timing.kept) < repeats and len(timing.kept) + len(timing.discarded) < attempts:
        timing.call(function, max_other_cores)
        if (
            budget_s is not None
            and len(timing.kept) >= min_repeats
            and sum(timing.kept) >= budget_s
        ):
            break
        if max_total_s is not None and sum(timing.kept) + sum(timing.discarded) >= max_total_s:
            break
    return timing


def timed_rounds(
    functions: dict[str, Callable[[], object]],
    *,
    repeats: int,
    max_rounds: int,
    max_other_cores: float | None,
    warmup: int = 0,
    per_call: bool = False,
    budget_s: float | None = None,
) -> tuple[dict[str, Timing], int]:
    """Wall times of each function over interleaved rounds in rotating order.

    After ``warmup`` untimed rounds, rounds are made until every function has ``repeats``
    kept calls, ``max_rounds`` rounds were made, or (with ``budget_s``, after the first round)
    that many seconds have passed. By default a round during which other processes kept more
    than ``max_other_cores`` cores busy is discarded as a whole, so that every kept round
    compares the functions under the same quiet conditions, and the process CPU time of each
    call is recorded too; with ``per_call``, each call is judged alone and a function that
    has its ``repeats`` kept calls sits the next rounds out. Each timing's ``result`` is what
    its last call returned. Returns the timings and the number of rounds made.
    """
    for _ in range(warmup):
        for function in functions.values():
            function()
    timings = {name: Timing() for name in functions}
    names = list(functions)
    start = time.perf_counter()
    rounds = 0
    while rounds < max_rounds and any(len(t.kept) < repeats for t in timings.values()):
        if budget_s is not None and rounds >= 1 and time.perf_counter() - start > budget_s:
            break
        shift = rounds % len(names)
        rotated = names[shift:] + names[:shift]
        order = [name for name in rotated if len(timings[name].kept) < repeats]
        if per_call:
            for name in order:
                timings[name].call(functions[name], max_other_cores)
        else:
            monitor = OtherLoad()
            calls = {}
            for name in order:
                timings[name].result = None
                cpu_start, wall_start = time.process_time(), time.perf_counter()
                timings[name].result = functions[name]()
                calls[name] = (time.perf_counter() - wall_start, time.process_time() - cpu_start)
            other = monitor.cores()
            for name, (seconds, cpu_seconds) in calls.items():
                timings[name].add(seconds, other, max_other_cores, cpu_seconds)
        rounds += 1
    return timings, rounds


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table; cells are converted with ``str``."""
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
    ]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def print_row(row: Sequence[object]) -> None:
    """Show a table row on stdout as soon as it is measured (progress of a long run)."""
    print(" | ".join(str(cell) for cell in row), flush=True)


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


def verdict(passed: bool | None, unknown: str = "n/a") -> str:
    """``PASS`` / ``MISS`` for a bar, or the reason it could not be judged."""
    if passed is None:
        return unknown
    return "PASS" if passed else "MISS"


# ---------------------------------------------------------------------------------------------
# Peak memory, optional peers, plots
# ---------------------------------------------------------------------------------------------

#: How peak memory is measured, for the notes of the tables that report it.
MEMORY_METHOD = (
    "peak memory = the process's peak resident set size during the call (VmHWM, reset just "
    "before it through /proc/self/clear_refs) minus its resident set size just before the "
    "call, after glibc's malloc_trim; it counts every allocation that reached memory (torch "
    "CPU tensors, peers' own buffers), which tracemalloc does not see"
)


def _resident_kib(name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(name + ":"):
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


def peak_memory_mib(function: Callable[[], object]) -> tuple[object, float | None, float]:
    """Call ``function`` once: its result, its peak extra resident memory in MiB, its seconds.

    See :data:`MEMORY_METHOD`. The memory is None where ``/proc/self/clear_refs`` cannot
    reset the peak (not Linux, or not permitted). The seconds are those of the call alone,
    without the garbage collection and trimming before it.
    """
    _release_free_memory()
    before = _resident_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        before = None
    start = time.perf_counter()
    result = function()
    elapsed = time.perf_counter() - start
    peak = _resident_kib("VmHWM") if before is not None else None
    if before is None or peak is None:
        return result, None, elapsed
    return result, max(peak - before, 0) / 1024, elapsed


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


def pyplot() -> object:
    """The pyplot module of matplotlib, with the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: object, markdown: Path, suffix: str) -> Path:
    """Save a matplotlib figure next to ``markdown`` as ``<stem>_<suffix>.png``; its path."""
    path = Path(markdown).with_name(f"{Path(markdown).stem}_{suffix}.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")  # type: ignore[attr-defined]
    import matplotlib.pyplot as plt

    plt.close(figure)  # type: ignore[arg-type]
    return path


def figure_link(path: Path | None, alt: str) -> str:
    """The markdown line that shows a saved figure (nothing where none was drawn)."""
    return "" if path is None else f"\n![{alt}]({path.name})\n"

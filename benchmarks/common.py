"""Shared pieces of the benchmark scripts: machine header, timing, atomic output, MNIST.

The scripts import this module by name (``import common``): run them as
``python benchmarks/<script>.py``, which puts this folder on ``sys.path``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from minsharp.data import load_mnist_split

BENCHMARKS_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCHMARKS_DIR / "results"
#: The shared offline copy of the MNIST test split: ``../shared/data/mnist`` from the repo root.
DEFAULT_MNIST_DIR = BENCHMARKS_DIR.parents[1] / "shared" / "data" / "mnist"
#: Threads used by every benchmark (the machine the results were first taken on has 2 cores).
THREADS = 2


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
        "--mnist",
        type=Path,
        default=DEFAULT_MNIST_DIR,
        help=f"folder with the MNIST test-split IDX files (default: {DEFAULT_MNIST_DIR})",
    )
    return parser


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
        f"- dtype: {dtype}",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
    ]
    if load is not None:
        lines.append(
            "- load average at start (1/5/15 min): " + " / ".join(f"{x:.2f}" for x in load)
        )
    lines += [f"- {item}" for item in extra]
    return "\n".join(lines) + "\n"


def load_note() -> str:
    """One line with the current load average (to spot a busy machine during the run)."""
    if not hasattr(os, "getloadavg"):
        return ""
    return "load average at end (1/5/15 min): " + " / ".join(f"{x:.2f}" for x in os.getloadavg())


def time_once(function: Callable[[], object]) -> float:
    """Wall time of one call, in seconds."""
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def median_seconds(
    function: Callable[[], object],
    *,
    repeats: int,
    warmup: int = 1,
    budget_s: float | None = None,
    min_repeats: int = 1,
) -> tuple[float, int]:
    """Median wall time of ``function`` over ``repeats`` calls after ``warmup`` untimed ones.

    With ``budget_s``, stop early once the timed calls have used that many seconds and at
    least ``min_repeats`` were made. Returns ``(median seconds, number of timed calls)``.
    """
    for _ in range(warmup):
        function()
    times: list[float] = []
    while len(times) < repeats:
        times.append(time_once(function))
        if budget_s is not None and len(times) >= min_repeats and sum(times) >= budget_s:
            break
    return statistics.median(times), len(times)


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
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
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

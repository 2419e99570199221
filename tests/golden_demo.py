"""Running the demo study for the golden test, normalising its report, collecting its fingerprints.

The demo trains float32 networks with SGD for 250 epochs, which amplifies the last bit of every
matrix product and reduction into percent-level differences in the measures. Those bits depend
on which instruction set the CPU kernels pick: a golden made on an AVX-512 machine did not match
an AVX2 one (CI, 2026-12-03). The demo therefore runs in a fresh interpreter with ATen's
kernels, MKL's conditional bitwise reproducibility (``MKL_CBWR``) and oneDNN all held at AVX2,
which every x86-64 machine we run on supports; the values are then the same on any of them.

Regenerate the golden files (after a change that is meant to move them) with
``.venv/bin/python -m tests.golden_demo``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden"

#: Environment that pins the CPU code paths to AVX2; read by torch, MKL and oneDNN at load
#: time, hence the subprocess.
PINNED_INSTRUCTION_SET = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
}

#: What legitimately differs from one run of the demo to the next: dates, timings, the
#: directory, and the machine and versions of the session.
_VOLATILE = (
    (re.compile(r"Written \d{4}-\d\d-\d\d \d\d:\d\d UTC"), "Written <date>"),
    (re.compile(r"; [\d.]+ s per run on average"), "; <seconds> per run on average"),
    (re.compile(r"\*\*Time\*\*: .*"), "**Time**: <time>"),
    (re.compile(r"^1\. \d{4}-\d\d-\d\dT.*$", re.M), "1. <session>"),
    (re.compile(r"^Report written with .*$", re.M), "Report written with <versions>"),
)


def run_demo(directory: Path) -> subprocess.CompletedProcess[str]:
    """Run ``minsharp study randomized-labels --preset demo`` on one thread into ``directory``."""
    command = [
        sys.executable, "-m", "minsharp", "study", "randomized-labels", "--preset", "demo",
        "--output", str(directory), "--threads", "1", "--no-progress",
    ]  # fmt: skip
    environment = {**os.environ, **PINNED_INSTRUCTION_SET}
    return subprocess.run(command, env=environment, capture_output=True, text=True, check=False)


def normalised_report(directory: Path) -> str:
    """``directory/report.md`` with dates, timings, the directory and the machine masked."""
    text = (directory / "report.md").read_text().replace(str(directory), "<dir>")
    for pattern, replacement in _VOLATILE:
        text = pattern.sub(replacement, text)
    return text


def fingerprints(directory: Path) -> dict[str, str]:
    """Run id → the fingerprint its ``result.json`` records."""
    return {
        path.parent.name: json.loads(path.read_text())["fingerprint"]
        for path in sorted((directory / "runs").glob("*/result.json"))
    }


def regenerate() -> None:
    """Write the demo's fingerprints and normalised report to ``tests/golden``."""
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch) / "demo"
        finished = run_demo(directory)
        if finished.returncode != 0:
            raise SystemExit(f"the demo study failed:\n{finished.stderr}")
        found = fingerprints(directory)
        (GOLDEN / "demo_fingerprints.json").write_text(json.dumps(found, indent=1) + "\n")
        (GOLDEN / "demo_report.md").write_text(normalised_report(directory))


if __name__ == "__main__":
    regenerate()

"""The benchmark scripts run end to end in their --quick mode and write their tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"

pytestmark = pytest.mark.skipif(
    not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"the benchmarks read the MNIST test split from {MNIST_DIR}, which is absent here",
)


def run_quick(script: str, output: Path) -> str:
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )
    assert completed.returncode == 0, completed.stderr
    assert "Traceback" not in completed.stderr
    text = output.read_text(encoding="utf-8")
    assert "QUICK MODE" in text
    assert "- threads: " in text
    assert "- machine: " in text
    assert not list(output.parent.glob(f".{output.name}.*")), "temporary file left behind"
    return text


def table_rows(text: str, first_cell: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith(f"| {first_cell}"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_paper_exactness_speed_quick(tmp_path) -> None:
    text = run_quick("paper_exactness_speed.py", tmp_path / "exactness.md")
    assert "## float32" in text
    assert "## float64" in text
    mlp_rows = table_rows(text, "tiny MLP")
    cnn_rows = table_rows(text, "tiny CNN")
    assert len(mlp_rows) == 2  # float32 and float64
    assert len(cnn_rows) == 2
    header = table_rows(text, "model ")[0]
    difference = header.index("max rel. diff diag H")
    for row in [mlp_rows[1], cnn_rows[1]]:
        # float64: the diagonals agree entry by entry to rounding.
        assert float(row[difference]) < 1e-12, row
    for row in mlp_rows + cnn_rows:
        assert len(row) == len(header)
        assert float(row[difference]) < 1e-4, row  # float32 agrees too


def test_cost_ratio_quick(tmp_path) -> None:
    text = run_quick("cost_ratio.py", tmp_path / "results" / "cost.md")
    rows = {row[0]: row for row in table_rows(text, "10 ") + table_rows(text, "100 ")}
    assert set(rows) == {"10", "100"}
    header = table_rows(text, "K ")[0]
    trace_ratio = header.index("trace / step (median)")
    trace_verdict = header.index("trace bar ≤ 2×")
    diagonal_verdict = header.index("diagonal bar ≤ 2.5×")
    assert rows["10"][trace_verdict] in ("PASS", "MISS")
    assert rows["10"][diagonal_verdict] in ("PASS", "MISS")
    assert rows["100"][trace_verdict].startswith("n/a")
    for row in rows.values():
        assert len(row) == len(header)
        assert row[trace_ratio].endswith("×")
        assert float(row[trace_ratio].rstrip("×")) > 0


def test_normalized_sharpness_solver_quick(tmp_path) -> None:
    text = run_quick("normalized_sharpness_solver.py", tmp_path / "ns.md")
    summary_header = table_rows(text, "state | objective | exact")[0]
    layer_header = table_rows(text, "state | objective | layer")[0]
    rows = table_rows(text, "init |") + table_rows(text, "trained |")
    summary = [row for row in rows if len(row) == len(summary_header)]
    layers = [row for row in rows if len(row) == len(layer_header)]
    assert {(row[0], row[1]) for row in summary} == {
        (state, objective) for state in ("init", "trained") for objective in ("arxiv", "icml")
    }
    assert len(layers) == 2 * 2 * 4  # states × objectives × Linear layers
    verdict = summary_header.index("bar (KKT ≤ 1e-10, CPU < 1 s)")
    kkt = layer_header.index("ours: certificate KKT")
    reevaluated = layer_header.index("ours: KKT re-evaluated")
    gap = layer_header.index("GD / ours − 1")
    for row in summary:
        assert row[verdict] in ("PASS", "MISS")
    for row in layers:
        assert float(row[kkt]) <= 1e-10, row
        assert float(row[reevaluated]) <= 1e-10, row
        assert float(row[gap]) >= -1e-9, row  # gradient steps never beat the minimum

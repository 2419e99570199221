"""The benchmark scripts run end to end in their --quick mode and write their tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import minsharp

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"

pytestmark = pytest.mark.skipif(
    not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"the benchmarks read the MNIST test split from {MNIST_DIR}, which is absent here",
)


def run_python(*arguments: str) -> subprocess.CompletedProcess:
    """Run this Python from the repository root; it must succeed."""
    completed = subprocess.run(
        [sys.executable, *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )
    assert completed.returncode == 0, completed.stderr
    return completed


def run_quick(script: str, output: Path) -> str:
    completed = run_python(str(BENCHMARKS / script), "--quick", "--output", str(output))
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


def table(text: str, header_start: str, *first_cells: str) -> tuple[list[str], list[list[str]]]:
    """The header row that starts so, and the rows of its width that start with a first cell."""
    header = table_rows(text, header_start)[0]
    rows = [row for first in first_cells for row in table_rows(text, first)]
    return header, [row for row in rows if len(row) == len(header)]


def test_engine_choices_quick(tmp_path) -> None:
    text = run_quick("engine_choices.py", tmp_path / "choices.md")
    header, rows = table(text, "K ", "3 ", "20 ")
    assert [row[header.index("engine")] for row in rows] == ["written out", "torch"]
    header, rows = table(text, "network", "784-100-100-10", "SmallMLP")
    variants = {(row[0], row[1], row[2]) for row in rows}
    for network in ("784-100-100-10", "SmallMLP 784-20-20-10"):
        assert (network, "diagonal", "chain, inputs squared at once") in variants
        assert (network, "trace", "general autograd path") in variants
    for row in rows:
        assert float(row[header.index("ms per call")]) > 0, row
        if row[2] == "chain by hand (default)":
            assert row[header.index("÷ default")] == "1.00", row
    assert "| find_layers(SmallMLP) |" in text


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
    """One row per network; bars judged where they apply; BackPACK ran or says why not."""
    text = run_quick("cost_ratio.py", tmp_path / "results" / "cost.md")
    header = table_rows(text, "network | K")[0]
    rows = {
        row[0]: row
        for row in (
            [cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in text.splitlines()
            if line.startswith("| ")
        )
        if len(row) == len(header) and row[0] != "network" and not set(row[0]) <= {"-"}
    }
    assert {"784-100-100-10", "SmallCNN", "ResNet-20, batch-norm", "784-100-100-1000"} <= set(rows)
    trace_bar = header.index("trace bar ≤ 1.5×")
    diagonal_bar = header.index("diagonal bar ≤ 2×")
    assert rows["784-100-100-10"][trace_bar] in ("PASS", "MISS")
    assert rows["784-100-100-10"][diagonal_bar] in ("PASS", "MISS")
    assert rows["SmallCNN"][trace_bar] == "no bar"
    for row in rows.values():
        assert float(row[header.index("trace / step")].rstrip("×")) > 0
        assert float(row[header.index("diagonal / step")].rstrip("×")) > 0
        peer = row[header.index("BackPACK / step")]
        assert peer.endswith("×") or peer == "not installed", row
        difference = row[header.index("max rel. diff BackPACK vs ours")]
        assert difference == "—" or float(difference) < 1e-4, row  # BackPACK agrees with us
    assert "memory bar: ours ≤ BackPACK" in text


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


PEER_COLUMNS = (
    "BackPACK DiagGGNExact (s, × ours diag)",
    "BackPACK DiagHessian (s, × ours diag)",
    "ASDL exact Fisher diag (s, × ours diag)",
    "nngeometry FIM PMatDiag (s, × ours diag)",
)


def test_peers_quick(tmp_path) -> None:
    """Every peer either ran (a time and a ratio) or says why not; ours always ran."""
    text = run_quick("peers.py", tmp_path / "peers.md")
    header, timed = table(text, "model | params", "mlp", "SmallCNN")
    assert len(timed) == 4  # two models × two class counts
    for row in timed:
        assert float(row[header.index("ours: diagonal (s)")]) > 0
        assert float(row[header.index("ours: trace (s)")]) > 0
        for column in PEER_COLUMNS:
            cell = row[header.index(column)]
            assert cell.endswith("×)") or cell.startswith(("not run (", "failed (")), cell
        difference = row[header.index("max rel. diff to ours")]
        assert difference == "n/a" or float(difference) < 1e-4, row  # peers agree with us
        verdict = row[header.index("bar: ours diagonal")]
        assert verdict.startswith(("PASS", "MISS", "no bar", "n/a")), verdict  # n/a: no BackPACK
    assert "## Peak memory of one call" in text
    assert "## Stochastic traces: Hutchinson" in text


def test_peers_quick_without_any_peer_installed(tmp_path) -> None:
    """With the peers hidden, the script still runs ours and marks each peer not installed."""
    output = tmp_path / "alone.md"
    peers = ("backpack", "asdl", "nngeometry", "pyhessian", "curvlinops")
    script = BENCHMARKS / "peers.py"
    hide = "\n".join(
        [
            "import runpy, sys",
            f"sys.modules.update(dict.fromkeys({peers!r}))",  # None: import raises
            f"sys.path.insert(0, {str(BENCHMARKS)!r})",
            f"sys.argv = [{str(script)!r}, '--quick', '--output', {str(output)!r}]",
            f"runpy.run_path({str(script)!r}, run_name='__main__')",
        ]
    )
    run_python("-c", hide)
    text = output.read_text(encoding="utf-8")
    assert "absent: " in text
    header, timed = table(text, "model | params", "mlp")
    assert timed
    for row in timed:
        assert float(row[header.index("ours: diagonal (s)")]) > 0
        for column in PEER_COLUMNS:
            assert row[header.index(column)] == "not run (not installed)"


def test_approximation_quick(tmp_path) -> None:
    text = run_quick("approximation.py", tmp_path / "approx.md")
    header, rows = table(text, "model | dtype", "tiny MLP")
    assert {row[header.index("directions")] for row in rows} == {"gaussian", "rademacher"}
    for row in rows:
        assert float(row[header.index("rel. error of diag (‖d̂ − d‖₂/‖d‖₂)")]) > 0
    assert (tmp_path / "approx_error.png").is_file()


def test_scaling_quick(tmp_path) -> None:
    text = run_quick("scaling.py", tmp_path / "scaling.md")
    header = table_rows(text, "axis | value")[0]
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith(("| N |", "| width |", "| depth |", "| K |"))
    ]
    assert {row[0] for row in rows} == {"N", "width", "depth", "K"}
    for row in rows:
        assert len(row) == len(header)
        assert row[header.index("trace / step")].endswith("×")
    assert (tmp_path / "scaling_time.png").is_file()


def test_solvers_quick(tmp_path) -> None:
    text = run_quick("solvers.py", tmp_path / "solvers.md")
    header, rows = table(text, "model | state", "tiny MLP")
    assert {row[header.index("state")] for row in rows} == {"init", "trained"}
    for row in rows:
        assert float(row[header.index("ours: ‖∇_u F‖/F")]) <= 1e-10, row


def test_report_assembles_the_results(tmp_path) -> None:
    """Sections in order, headings demoted, plots copied and relinked, bars summarised."""
    results = tmp_path / "results"
    results.mkdir()
    (results / "peers.md").write_text(
        "# Peers title\n\n- threads: 1\n\n## Time\n\n"
        "| model | K | bar: ours diagonal |\n| --- | --- | --- |\n"
        "| SmallMLP | 10 | MISS (≥ 2× BackPACK GGN) |\n| LeNet | 10 | PASS (faster) |\n"
        "\n![plot](peers_speedups.png)\n",
        encoding="utf-8",
    )
    (results / "peers_speedups.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (results / "cost_ratio.md").write_text(
        "# Cost\n\n| K | trace bar ≤ 2× |\n| --- | --- |\n| 10 | PASS |\n", encoding="utf-8"
    )
    output = tmp_path / "docs" / "benchmarks.md"
    run_python(str(BENCHMARKS / "report.py"), "--results", str(results), "--output", str(output))
    text = output.read_text(encoding="utf-8")
    assert text.startswith("# Benchmarks")
    assert "### Peers title" in text and "#### Time" in text
    assert text.index("### Peers title") < text.index("### Cost")
    assert "Not yet run:" in text and "`scaling.md`" in text
    assert (tmp_path / "docs" / "benchmarks" / "peers_speedups.png").is_file()
    assert "(benchmarks/peers_speedups.png)" in text
    summary = text[text.index("## Bars") : text.index("### Peers title")]
    assert "| 1 | 1 |" in summary  # peers: one PASS, one MISS
    missed = [line for line in summary.splitlines() if line.startswith("- ")]
    assert len(missed) == 1 and "SmallMLP" in missed[0] and "MISS" in missed[0]


def test_balance_quick(tmp_path) -> None:
    text = run_quick("balance.py", tmp_path / "balance.md")
    header, rows = table(text, "network", "paper MLP", "ResNet-20")
    assert len(rows) == 4
    for row in rows:
        assert float(row[header.index("max imbalance")]) <= 1e-10, row
        layer, neuron = float(row[header.index("layer MS")]), float(row[header.index("neuron MS")])
        assert neuron <= layer * (1 + 1e-6), row


def test_measure_costs_quick(tmp_path) -> None:
    text = run_quick("measure_costs.py", tmp_path / "costs.md")
    header, rows = table(text, "measure", *minsharp.available())
    assert {row[0] for row in rows} == set(minsharp.available())
    steps = [row[header.index("training steps")] for row in rows if row[1] != "n/a"]
    assert len(steps) >= len(rows) - 1 and all(float(cell) > 0 for cell in steps)
    assert "bar: all measures together" in text

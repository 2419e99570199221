"""The balancing solver against closed forms and scipy, and its unattained infima."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.optimize

from minsharp.solvers.balance import balance


def _scipy(num_nodes: int, dst: np.ndarray, src: np.ndarray, weight: np.ndarray) -> float:
    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        u = np.concatenate([[0.0], x])
        w = weight * np.exp(-2 * (u[dst] - u[src]))
        grad = -2 * np.bincount(dst, w, num_nodes) + 2 * np.bincount(src, w, num_nodes)
        return float(w.sum()), grad[1:]

    options = {"gtol": 1e-13, "maxiter": 5000}
    return scipy.optimize.minimize(
        objective, np.zeros(num_nodes - 1), jac=True, method="BFGS", options=options
    ).fun


def test_two_terms_closed_form():
    # a e^{−2u} + b e^{2u} has minimum 2√(ab) at e^{4u} = a/b.
    result = balance(2, np.array([1, 0]), np.array([0, 1]), np.array([9.0, 4.0]))
    assert result.value == pytest.approx(12.0, rel=1e-14)
    assert result.log_scales[1] == pytest.approx(0.25 * np.log(9 / 4), rel=1e-12)
    assert result.attained and result.max_relative_imbalance <= 1e-10


@pytest.mark.parametrize("seed", range(4))
def test_random_strongly_connected_graphs_match_scipy(seed):
    rng = np.random.default_rng(seed)
    num_nodes = 12
    dst, src = np.meshgrid(np.arange(num_nodes), np.arange(num_nodes), indexing="ij")
    keep = (dst != src) & (rng.random(dst.shape) < 0.4)
    keep[np.arange(num_nodes), np.roll(np.arange(num_nodes), 1)] = True  # a Hamilton cycle
    dst, src = dst[keep], src[keep]
    weight = rng.lognormal(0, 2, dst.size)
    result = balance(num_nodes, dst, src, weight)
    assert result.attained
    assert result.max_relative_imbalance <= 1e-10
    assert result.value == pytest.approx(_scipy(num_nodes, dst, src, weight), rel=1e-8)


def test_edge_on_no_cycle_is_driven_to_zero():
    # 0 → 1 → 2 → 0 is a cycle; 3 has only an outgoing edge (to 1): u_3 → −∞.
    dst, src = np.array([1, 2, 0, 1]), np.array([0, 1, 2, 3])
    weight = np.array([1.0, 2.0, 3.0, 5.0])
    result = balance(4, dst, src, weight)
    assert not result.attained
    assert result.cut_edges.tolist() == [3]
    assert result.value == pytest.approx(3 * 6 ** (1 / 3), rel=1e-12)


def test_zero_weights_and_isolated_nodes_are_ignored():
    result = balance(3, np.array([1, 0, 2]), np.array([0, 1, 0]), np.array([1.0, 1.0, 0.0]))
    assert result.attained and result.value == pytest.approx(2.0, rel=1e-14)


def _layered(widths: list[int]) -> tuple[int, np.ndarray, np.ndarray]:
    """A chain's graph: ground → layer 1 → … → layer L → ground, all edges between layers."""
    starts = np.cumsum([1, *widths])
    layers = [np.array([0])] + [np.arange(a, b) for a, b in itertools.pairwise(starts)]
    layers.append(np.array([0]))
    dst, src = [], []
    for before, after in itertools.pairwise(layers):
        grid_dst, grid_src = np.meshgrid(after, before, indexing="ij")
        dst.append(grid_dst.ravel())
        src.append(grid_src.ravel())
    return int(starts[-1]), np.concatenate(dst), np.concatenate(src)


@pytest.mark.parametrize("seed", range(3))
def test_layered_graphs_match_scipy(seed):
    # The free nodes' graph is bipartite (layers alternate), so Osborne updates whole layers.
    rng = np.random.default_rng(seed)
    num_nodes, dst, src = _layered([5, 3, 4])
    weight = rng.lognormal(0, 1.5, dst.size)
    result = balance(num_nodes, dst, src, weight)
    assert result.attained and result.max_relative_imbalance <= 1e-10
    assert result.value == pytest.approx(_scipy(num_nodes, dst, src, weight), rel=1e-8)


def test_parallel_edges_are_summed():
    rng = np.random.default_rng(7)
    num_nodes, dst, src = _layered([3, 2])
    weight = rng.lognormal(0, 1, dst.size)
    split = rng.random(dst.size)
    doubled = balance(
        num_nodes,
        np.tile(dst, 2),
        np.tile(src, 2),
        np.concatenate([weight * split, weight * (1 - split)]),
    )
    single = balance(num_nodes, dst, src, weight)
    assert doubled.value == pytest.approx(single.value, rel=1e-12)
    np.testing.assert_allclose(doubled.log_scales, single.log_scales, atol=1e-9)


def test_component_without_ground_is_balanced_around_its_own_anchor():
    # Nodes 1 ⇄ 2 form a cycle that never meets ground: only their ratio matters.
    result = balance(3, np.array([2, 1]), np.array([1, 2]), np.array([9.0, 1.0]))
    assert result.attained and result.value == pytest.approx(6.0, rel=1e-14)


def test_parallel_edges_with_a_cut_edge():
    # scipy's strong components mislabel repeated entries; the solver merges them first.
    dst, src = np.array([1, 1, 0, 1, 1]), np.array([0, 0, 1, 2, 2])
    result = balance(3, dst, src, np.array([1.0, 3.0, 9.0, 2.0, 5.0]))
    assert not result.attained
    assert sorted(result.cut_edges.tolist()) == [3, 4]
    assert result.value == pytest.approx(2 * np.sqrt(4.0 * 9.0), rel=1e-12)

"""The table of measures: every measure minsharp provides, declared in one place.

Each row is a :class:`~minsharp.measures.result.MeasureSpec`: the registry name (which
studies, result files and the CLI use), the function computing it, the symmetries it is
invariant to, what it requires of the model and data, a one-line summary and its paper.
``tests/test_registry.py`` walks this table and proves every declared invariance, and that
each undeclared one moves the value. Adding a measure: write its ``compute(model, data, *,
options…) -> Evaluation`` in its own module, add its row here and its public function in
``minsharp/measures/__init__.py``.
"""

from __future__ import annotations

from minsharp.measures import (
    bn_sharpness,
    curvature_baselines,
    fisher_rao,
    minimum_sharpness,
    normalized_sharpness,
    pac_bayes,
    perturbation,
    quotient_flatness,
    relative_flatness,
)
from minsharp.measures.result import MeasureSpec

MEASURES: tuple[MeasureSpec, ...] = (
    MeasureSpec(
        name="bn_sharpness",
        invariances=frozenset({"layer", "batchnorm"}),
        requires=frozenset({"labels", "batchnorm"}),
        summary="(1/δ)∫_0^δ [L(θ+tv) − L(θ)] dt along v_k = ‖w_k‖ g_k/‖g_k‖ per block "
        "(reconstructed)",
        reference="Yi, Zhang, Chen, Ma & Liu, IJCAI 2019 (reconstructed, theory §5)",
        compute=bn_sharpness.bn_sharpness,
    ),
    MeasureSpec(
        name="hessian_trace",
        invariances=frozenset(),
        requires=frozenset(),
        summary="Tr H, exact: sum of the per-layer traces of the curvature engine",
        reference="Ibayashi, Hamaguchi & Imaizumi 2021 (exact per-layer formula)",
        compute=curvature_baselines.exact_hessian_trace,
    ),
    MeasureSpec(
        name="top_eigenvalue",
        invariances=frozenset(),
        summary="λ_max(H), the largest Hessian eigenvalue, by Lanczos on Hessian-vector products",
        reference="Keskar et al. 2017; Dinh, Pascanu, Bengio & Bengio 2017 "
        "(not rescaling-invariant)",
        requires=frozenset({"labels"}),
        compute=curvature_baselines.top_eigenvalue,
    ),
    MeasureSpec(
        name="hutchinson_trace",
        invariances=frozenset(),
        summary="Tr H estimated by Hutchinson's E[vᵀHv] over Rademacher probes v, with its error",
        reference="Hutchinson 1989; Avron & Toledo 2011",
        requires=frozenset({"labels"}),
        stochastic=True,
        compute=curvature_baselines.hutchinson_trace,
    ),
    MeasureSpec(
        name="fisher_rao",
        invariances=frozenset({"layer", "neuron", "batchnorm"}),
        requires=frozenset({"labels"}),
        summary="Fisher–Rao norm E[(θᵀ∇ℓ)²], exact, by one Jacobian-vector product along θ",
        reference="Liang, Poggio, Rakhlin & Stokes 2019",
        compute=fisher_rao.fisher_rao_norm,
    ),
    MeasureSpec(
        name="minimum_sharpness",
        invariances=frozenset({"layer"}),
        requires=frozenset(),
        summary="min over rescalings of Tr H, one scale per module output (exact diag H, "
        "balancing over the model's graph; symmetry='neuron': per unit)",
        reference="Ibayashi, Hamaguchi & Imaizumi 2021; any graph and per-unit scales: ours",
        compute=minimum_sharpness.minimum_sharpness_evaluation,
    ),
    MeasureSpec(
        name="neuron_minimum_sharpness",
        invariances=frozenset({"layer", "neuron"}),
        requires=frozenset(),
        summary="min over per-unit rescalings of Tr H: minimum_sharpness with symmetry='neuron'",
        reference="ours: Minimum Sharpness (Ibayashi et al. 2021) over the full group",
        compute=minimum_sharpness.neuron_minimum_sharpness,
    ),
    MeasureSpec(
        name="normalized_sharpness",
        invariances=frozenset({"layer", "neuron", "batchnorm"}),
        requires=frozenset(),
        summary="Σ_l min over row/column scales σ, σ' of Σ h σ²σ'² + W²/(σ²σ'²), exact diag H "
        "(arXiv version)",
        reference=normalized_sharpness.REFERENCE + "; arXiv version of the objective",
        compute=normalized_sharpness.normalized_sharpness,
    ),
    MeasureSpec(
        name="normalized_sharpness_icml",
        invariances=frozenset({"layer", "neuron", "batchnorm"}),
        requires=frozenset(),
        summary="Σ_l min over column scales s of √(Σ_i (Σ_j h s_j)(Σ_j W²/s_j)), exact diag H "
        "(ICML version)",
        reference=normalized_sharpness.REFERENCE
        + "; ICML version of the objective, as coded by Ibayashi et al. 2021",
        compute=normalized_sharpness.normalized_sharpness_icml,
    ),
    MeasureSpec(
        name="epsilon_sharpness",
        invariances=frozenset(),
        requires=frozenset({"labels"}),
        summary="100·(max over the box |ε_i| ≤ ε(|θ_i|+1) of L(θ+ε) − L(θ)) / (1 + L(θ))",
        reference="Keskar, Mudigere, Nocedal, Smelyanskiy & Tang 2017 (ICLR)",
        compute=perturbation.epsilon_sharpness,
    ),
    MeasureSpec(
        name="adaptive_sharpness",
        invariances=frozenset({"layer", "neuron", "batchnorm"}),
        requires=frozenset({"labels"}),
        summary="max over ‖ε ⊘ |θ|‖_p ≤ ρ of L(θ+ε) − L(θ) (worst case, ℓ∞ or ℓ2)",
        reference="Kwon et al. 2021 (ASAM); Andriushchenko et al. 2023 (ICML)",
        compute=perturbation.adaptive_sharpness,
    ),
    MeasureSpec(
        name="adaptive_sharpness_average",
        invariances=frozenset({"layer", "neuron", "batchnorm"}),
        requires=frozenset({"labels"}),
        summary="E over η ~ N(0, ρ² I) of L(θ + |θ| ⊙ η) − L(θ), Monte Carlo",
        reference="Andriushchenko et al. 2023 (ICML); Kwon et al. 2021",
        stochastic=True,
        compute=perturbation.adaptive_sharpness_average,
    ),
    MeasureSpec(
        name="pac_bayes_flatness",
        invariances=frozenset(),
        requires=frozenset({"labels"}),
        summary="1/σ² for the largest Gaussian σ with |E metric(θ+u) − metric(θ)| ≤ target",
        reference="Jiang, Neyshabur, Mobahi, Krishnan & Bengio 2020; Dziugaite & Roy 2017",
        stochastic=True,
        compute=pac_bayes.pac_bayes_flatness,
    ),
    MeasureSpec(
        name="quotient_flatness",
        invariances=frozenset({"layer"}),
        requires=frozenset({"labels"}),
        summary="λ_max(D H D), D = blockdiag(‖P‖_F I) over parameter tensors; "
        "Lanczos on the full H",
        reference="Rangamani, Nguyen, Kumar, Phan, Chin & Tran 2019",
        compute=quotient_flatness.quotient_flatness,
    ),
    MeasureSpec(
        name="relative_flatness",
        invariances=frozenset({"layer", "batchnorm"}),
        requires=frozenset(),
        summary="κ_Tr(W) = Σ_{s,s'} ⟨w_s, w_s'⟩ Tr H_{s,s'} of one Linear layer "
        "(default: the last)",
        reference="Petzka, Kamp, Adilova, Sminchisescu & Boley 2021",
        compute=relative_flatness.relative_flatness,
    ),
)

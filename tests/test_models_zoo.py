"""The model zoo: LeNet as theory §6 specifies it, the CIFAR networks, and build_model's checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import minsharp
from minsharp.errors import ModelError
from minsharp.models import (
    VGG11_LAYOUT,
    ZOO,
    build_model,
    count_parameters,
    lenet,
    resnet20,
    small_cnn,
    vgg11,
)


def test_lenet_is_the_paper_network_on_mnist():
    net = lenet()
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    linears = [m for m in net if isinstance(m, nn.Linear)]
    pools = [m for m in net if isinstance(m, nn.MaxPool2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (1, 6, (5, 5), (2, 2)),
        (6, 16, (5, 5), (0, 0)),
        (16, 120, (5, 5), (0, 0)),
    ]
    assert [(p.kernel_size, p.stride) for p in pools] == [(2, 1), (2, 2)]
    assert [(m.in_features, m.out_features) for m in linears] == [(5880, 84), (84, 10)]
    assert sum(isinstance(m, nn.ReLU) for m in net) == 4
    assert all(m.bias is not None for m in [*convs, *linears])
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert not any(m.bias is not None for m in lenet(bias=False) if hasattr(m, "bias"))


@pytest.mark.parametrize(
    ("channels", "size", "classes"), [(3, 32, 7), (1, 16, 2), (2, (20, 31), 4)]
)
def test_lenet_and_small_cnn_fit_any_image_size(channels, size, classes):
    height, width = (size, size) if isinstance(size, int) else size
    for factory in (lenet, small_cnn):
        net = factory(channels, size, classes)
        assert net(torch.zeros(2, channels, height, width)).shape == (2, classes)


def test_too_small_images_are_refused():
    with pytest.raises(ModelError, match="lenet needs images of at least 15×15 pixels; got 14×14"):
        lenet(1, 14)
    with pytest.raises(ModelError, match="small_cnn needs images of at least 16×16"):
        small_cnn(1, (15, 28))
    assert lenet(1, 15)(torch.zeros(1, 1, 15, 15)).shape == (1, 10)
    assert small_cnn(1, 16)(torch.zeros(1, 1, 16, 16)).shape == (1, 10)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_zoo_model_builds_for_its_inputs(name):
    shape = (1, 28, 28) if ZOO[name].images else (64,)
    net = build_model(name, shape, 3)
    assert net(torch.zeros(2, *shape)).shape == (2, 3)
    without = build_model(name, shape, 3, bias=False)
    assert count_parameters(without) < count_parameters(net)


def test_mlp_hidden_widths():
    net = build_model("mlp", (8, 8), 10, hidden=[5, 4])
    assert [m.out_features for m in net if isinstance(m, nn.Linear)] == [5, 4, 10]
    assert [
        m.out_features for m in build_model("mlp", (4,), 2, hidden=3) if isinstance(m, nn.Linear)
    ] == [3, 2]
    with pytest.raises(ModelError, match="option hidden must be a positive width"):
        build_model("mlp", (4,), 2, hidden=[3, 0])


def test_build_model_errors_name_the_model_and_what_it_accepts():
    with pytest.raises(ModelError, match=r"unknown model 'lenet5'\. Did you mean lenet"):
        build_model("lenet5", (1, 28, 28), 10)
    with pytest.raises(
        ModelError, match=r"model 'lenet' has no option 'width'; its options are: bias=True"
    ):
        build_model("lenet", (1, 28, 28), 10, width=3)
    with pytest.raises(ModelError, match=r"takes images of shape \(channels, height, width\)"):
        build_model("small_cnn", (784,), 10)
    with pytest.raises(ModelError, match="option bias must be True or False"):
        build_model("small_mlp", (4,), 10, bias="no")
    with pytest.raises(ModelError, match="num_classes must be a positive integer"):
        build_model("small_mlp", (4,), 0)


@pytest.mark.parametrize("batchnorm", [True, False])
def test_resnet20_is_the_cifar_network(batchnorm):
    net = resnet20(3, 10, batchnorm=batchnorm)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    # 1 stem + 3 stages × 3 blocks × 2 convs + 2 projection shortcuts (1×1).
    assert len(convs) == 21
    assert sum(c.kernel_size == (1, 1) for c in convs) == 2
    assert sorted({c.out_channels for c in convs}) == [16, 32, 64]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == (21 if batchnorm else 0)
    assert all((c.bias is None) == batchnorm for c in convs)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert net.eval()(torch.zeros(1, 1 + 2, 9, 13)).shape == (1, 10)  # any image size
    assert build_model("resnet20", (1, 28, 28), 4)(torch.zeros(2, 1, 28, 28)).shape == (2, 4)


@pytest.mark.parametrize("batchnorm", [True, False])
def test_vgg11_is_configuration_a_in_the_cifar_form(batchnorm):
    net = vgg11(3, 32, 10, batchnorm=batchnorm)
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [s for s in VGG11_LAYOUT if s != "M"]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert all((c.bias is None) == batchnorm for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net) == (8 if batchnorm else 0)
    assert sum(isinstance(m, nn.MaxPool2d) for m in net) == 5
    (linear,) = [m for m in net if isinstance(m, nn.Linear)]
    assert (linear.in_features, linear.out_features) == (512, 10)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    narrow = [
        m.out_channels for m in vgg11(width=16, batchnorm=batchnorm) if isinstance(m, nn.Conv2d)
    ]
    assert narrow == [c.out_channels // 4 for c in convs]
    assert build_model("vgg11", (3, 32, 32), 10, batchnorm=batchnorm)(
        torch.randn(2, 3, 32, 32)
    ).shape == (2, 10)


@pytest.mark.parametrize(
    ("size", "pools", "features"),
    [
        ((28, 28), 4, 512),  # 28 → 14 → 7 → 3 → 1: the fifth pooling is skipped
        ((64, 64), 5, 512 * 2 * 2),  # the classifier takes the 2×2 maps left
        ((1, 1), 0, 512),  # nothing to pool
        ((9, 40), 5, 512 * 1 * 1),  # 9 → 4 → 2 → 1 → 1 → 1 and 40 → 20 → 10 → 5 → 2 → 1
    ],
)
def test_vgg11_skips_the_poolings_a_small_image_has_no_room_for(size, pools, features):
    net = vgg11(2, size, 7)
    assert sum(isinstance(m, nn.MaxPool2d) for m in net) == pools
    assert net[-1].in_features == features
    assert net(torch.randn(3, 2, *size)).shape == (3, 7)


def _exact_trace_check(net: nn.Module, inputs: torch.Tensor) -> None:
    """``hessian_trace`` of the last layer against its closed form for the cross-entropy.

    For logits ``W h + b`` and softmax ``p``, the mean loss's Hessian in ``b`` is the mean of
    ``diag(p) − p pᵀ``, whose trace is ``mean(1 − ‖p‖²)``; in ``W`` it is that times ``‖h‖²``.
    """
    labels = torch.arange(len(inputs)) % 10
    net = net.double().eval()
    inputs = inputs.double()
    trace = minsharp.hessian_trace(net, (inputs, labels))
    features = net[:-1](inputs)
    probabilities = torch.softmax(net[-1](features), dim=1)
    spread = 1 - (probabilities**2).sum(dim=1)
    last = str(len(net) - 1)
    assert trace.by_parameter[f"{last}.bias"] == pytest.approx(spread.mean().item(), rel=1e-10)
    expected_weight = (spread * (features**2).sum(dim=1)).mean().item()
    assert trace.by_parameter[f"{last}.weight"] == pytest.approx(expected_weight, rel=1e-10)
    assert all(value >= 0 for value in trace.by_parameter.values())  # ReLU nets: PSD blocks
    assert trace.total == pytest.approx(sum(trace.by_parameter.values()))


@pytest.mark.parametrize("batchnorm", [True, False])
def test_exact_trace_runs_on_vgg11_for_cifar_images(batchnorm):
    torch.manual_seed(0)
    net = build_model("vgg11", (3, 32, 32), 10, batchnorm=batchnorm)
    _exact_trace_check(net, torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize("batchnorm", [True, False])
def test_exact_trace_runs_on_resnet20(batchnorm):
    torch.manual_seed(0)
    net = build_model("resnet20", (3, 8, 8), 10, batchnorm=batchnorm)
    _exact_trace_check(net, torch.randn(2, 3, 8, 8))


@pytest.mark.parametrize(
    ("name", "shape", "options"),
    [
        ("vgg11", (3, 32, 32), {"width": 4}),
        ("vgg11", (3, 32, 32), {"width": 4, "batchnorm": True}),
        ("resnet20", (3, 4, 4), {"batchnorm": False}),
        ("resnet20", (3, 4, 4), {"batchnorm": True}),
    ],
)
def test_neuron_wise_minimum_sharpness_runs_and_its_rescaled_twin_attains_it(name, shape, options):
    torch.manual_seed(0)
    net = build_model(name, shape, 10, **options).double().eval()
    inputs = torch.randn(2, *shape, dtype=torch.float64)
    data = (inputs, torch.tensor([3, 7]))
    result = minsharp.minimum_sharpness(net, data, symmetry="neuron")
    assert result.certificate["attained"] and result.value <= result.trace
    twin = result.rescaled(net)
    assert minsharp.hessian_trace(twin, data).total == pytest.approx(result.value, rel=1e-9)
    with torch.no_grad():
        assert torch.allclose(twin(inputs), net(inputs), rtol=1e-10, atol=1e-12)

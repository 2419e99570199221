"""Networks of the seed papers (theory §6), for any input shape and class count.

The builders live in :mod:`minsharp.models.networks` (the Minimum Sharpness paper's MLPs and
small CNNs) and :mod:`minsharp.models.cifar` (ResNet-20, VGG-11); :data:`ZOO` names each
network for the command line and :func:`build_model` builds one by name for a data set's
input shape and class count (:mod:`minsharp.models.zoo`); :func:`make_model` resolves what a
user names a network, a zoo name or their own ``package.module:function``
(:mod:`minsharp.models.factory`).
"""

from __future__ import annotations

from minsharp.models.cifar import VGG11_LAYOUT, resnet20, vgg11
from minsharp.models.factory import import_factory, is_factory_spec, make_model
from minsharp.models.networks import lenet, mlp, paper_mlp, small_cnn, small_mlp
from minsharp.models.zoo import ZOO, ZooEntry, build_model, count_parameters

__all__ = [
    "VGG11_LAYOUT",
    "ZOO",
    "ZooEntry",
    "build_model",
    "count_parameters",
    "import_factory",
    "is_factory_spec",
    "lenet",
    "make_model",
    "mlp",
    "paper_mlp",
    "resnet20",
    "small_cnn",
    "small_mlp",
    "vgg11",
]

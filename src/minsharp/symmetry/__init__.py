"""The rescaling symmetries that leave a network's function unchanged (theory §2, §7).

:mod:`.layerwise` holds the layer-wise α-scale transformation of chain networks: finding the
layers, applying a rescaling to a copy, verifying that the copy computes the same function.
"""

from minsharp.symmetry.layerwise import (
    PRODUCT_TOLERANCE,
    chain_layers,
    rescale,
    rescaled_copy,
    verify_same_function,
)

__all__ = [
    "PRODUCT_TOLERANCE",
    "chain_layers",
    "rescale",
    "rescaled_copy",
    "verify_same_function",
]

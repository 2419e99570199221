"""The network ``minsharp measure`` runs on: a zoo model or the user's factory, checked.

``--model NAME`` builds a model of :data:`minsharp.models.ZOO` for the data's input shape and
class count; ``--model package.module:function`` imports the user's factory (the current
directory first) and calls it with the ``--model-option`` pairs. :func:`check_model_fits`
then runs two examples through it, so that a mismatch is reported before any computing.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from minsharp.data.sources import LoadedData
from minsharp.errors import MinsharpError, ModelError
from minsharp.models import ZOO, build_model, count_parameters, did_you_mean

_FACTORY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def import_factory(text: str) -> Any:
    """The callable named ``package.module:function`` (the attribute may be dotted).

    The current directory is searched before the Python path during the import.

    Raises:
        ModelError: the module cannot be imported, or has no such callable.
    """
    module_name, _, attribute = text.partition(":")
    here = os.getcwd()
    added = here not in sys.path
    if added:
        sys.path.insert(0, here)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise ModelError(
            f"--model {text}: cannot import module {module_name!r} ({error}). Run from the "
            "directory that holds it or add that directory to PYTHONPATH."
        ) from error
    except Exception as error:  # the user's module failed while importing
        raise ModelError(
            f"--model {text}: importing {module_name!r} raised {type(error).__name__}: {error}"
        ) from error
    finally:
        if added:
            sys.path.remove(here)
    factory: Any = module
    for part in attribute.split("."):
        if not hasattr(factory, part):
            raise ModelError(f"--model {text}: module {module_name!r} has no {attribute!r}.")
        factory = getattr(factory, part)
    if not callable(factory):
        raise ModelError(
            f"--model {text}: {attribute!r} is a {type(factory).__name__}, not callable."
        )
    return factory


def make_model(
    text: str, options: dict[str, Any], input_shape: Sequence[int], num_classes: int
) -> tuple[nn.Module, dict[str, Any]]:
    """The network of ``--model`` (a :data:`~minsharp.models.ZOO` name or a factory path).

    A zoo network is built for ``input_shape`` and ``num_classes`` with ``options``; a factory
    ``package.module:function`` is called with ``options`` only.

    Returns:
        The model and what the JSON output says about it.

    Raises:
        ModelError: bad ``--model`` syntax, unknown name or option, a factory that fails or
            returns something other than a ``torch.nn.Module``.
    """
    if ":" not in text:
        if text not in ZOO:
            raise ModelError(
                f"unknown model {text!r}.{did_you_mean(text)} Give a model of the zoo "
                f"({', '.join(ZOO)}) or your own factory as package.module:function."
            )
        model = build_model(text, input_shape, num_classes, **options)
        record = {"source": "zoo", "options": {**ZOO[text].options, **options}}
    elif _FACTORY.fullmatch(text):
        factory = import_factory(text)
        try:
            model = factory(**options)
        except MinsharpError:
            raise
        except Exception as error:  # the user's factory: report, don't crash
            raise ModelError(
                f"--model {text}: calling it with options {options} raised "
                f"{type(error).__name__}: {error}"
            ) from error
        if not isinstance(model, nn.Module):
            raise ModelError(
                f"--model {text} returned a {type(model).__name__}; it must return a "
                "torch.nn.Module."
            )
        record = {"source": "factory", "options": options}
    else:
        raise ModelError(
            f"--model {text!r}: expected a model name ({', '.join(ZOO)}) or "
            "package.module:function, e.g. --model mynets:build."
        )
    record = {"spec": text, **record, "parameters": count_parameters(model)}
    return model, record


def check_model_fits(model: nn.Module, data: LoadedData, name: str) -> int:
    """Run two examples through the model; the number of outputs per example.

    Raises:
        ModelError: the forward pass fails (shape mismatch…) or the outputs are not logits
            ``(N, K)`` with a column for every label in the data.
    """
    with torch.no_grad():
        try:
            logits = model(data.inputs[:2])
        except Exception as error:
            raise ModelError(
                f"model {name} cannot take the inputs of --data {data.record['spec']} (one "
                f"example of shape {tuple(data.inputs.shape[1:])}): {type(error).__name__}: "
                f"{error}"
            ) from error
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ModelError(f"model {name} returns {shape}; it must return logits of shape (N, K).")
    largest = int(data.labels.max())
    if largest >= logits.shape[1]:
        raise ModelError(
            f"model {name} has {logits.shape[1]} outputs, but --data {data.record['spec']} has "
            f"labels up to {largest}. Use --num-classes {largest + 1} (zoo models) or a "
            "matching factory."
        )
    return int(logits.shape[1])

"""A network named as users name it: a model of the zoo, or their own factory function.

``NAME`` builds the :data:`~minsharp.models.zoo.ZOO` network for the data's input shape and
class count; ``package.module:function`` imports the user's module (the current directory
first, then ``sys.path``, so ``PYTHONPATH`` too) and calls the function with the model's
options as keyword arguments. ``minsharp measure --model`` and ``minsharp study --models``
both resolve their models here, so a factory is called the same way by both.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from torch import nn

from minsharp.errors import MinsharpError, ModelError
from minsharp.models.zoo import ZOO, build_model, count_parameters, did_you_mean

_FACTORY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def is_factory_spec(text: str) -> bool:
    """Whether ``text`` has the form ``package.module:function`` (the attribute may be dotted).

    Example:
        >>> is_factory_spec("mynets:wide"), is_factory_spec("lenet"), is_factory_spec("a:b:c")
        (True, False, False)
    """
    return isinstance(text, str) and _FACTORY.fullmatch(text) is not None


def import_factory(text: str, *, flag: str = "--model") -> Any:
    """The callable named ``package.module:function`` (the attribute may be dotted).

    The current directory is searched before the Python path during the import. ``flag``
    names where the text came from in the messages.

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
            f"{flag} {text}: cannot import module {module_name!r} ({error}). Run from the "
            "directory that holds it or add that directory to PYTHONPATH."
        ) from error
    except Exception as error:  # the user's module failed while importing
        raise ModelError(
            f"{flag} {text}: importing {module_name!r} raised {type(error).__name__}: {error}"
        ) from error
    finally:
        if added:
            sys.path.remove(here)
    factory: Any = module
    for part in attribute.split("."):
        if not hasattr(factory, part):
            raise ModelError(f"{flag} {text}: module {module_name!r} has no {attribute!r}.")
        factory = getattr(factory, part)
    if not callable(factory):
        raise ModelError(
            f"{flag} {text}: {attribute!r} is a {type(factory).__name__}, not callable."
        )
    return factory


def make_model(
    text: str,
    options: dict[str, Any],
    input_shape: Sequence[int],
    num_classes: int,
    *,
    flag: str = "--model",
) -> tuple[nn.Module, dict[str, Any]]:
    """The network ``text`` names: a :data:`~minsharp.models.zoo.ZOO` name or a factory path.

    A zoo network is built for ``input_shape`` and ``num_classes`` with ``options``
    (:func:`~minsharp.models.zoo.build_model`); a factory ``package.module:function`` is
    called with ``options`` only, as ``function(**options)``, and must return a
    ``torch.nn.Module``. ``flag`` names where ``text`` came from in the messages.

    Returns:
        The model and what a record says about it: ``{"spec", "source": "zoo" | "factory",
        "options", "parameters"}``.

    Raises:
        ModelError: bad syntax, unknown name or option, a factory that fails or returns
            something other than a ``torch.nn.Module``.
    """
    if ":" not in text:
        if text not in ZOO:
            raise ModelError(
                f"unknown model {text!r}.{did_you_mean(text)} Give a model of the zoo "
                f"({', '.join(ZOO)}) or your own factory as package.module:function."
            )
        model = build_model(text, input_shape, num_classes, **options)
        record = {"source": "zoo", "options": {**ZOO[text].options, **options}}
    elif is_factory_spec(text):
        factory = import_factory(text, flag=flag)
        try:
            model = factory(**options)
        except MinsharpError:
            raise
        except Exception as error:  # the user's factory: report, don't crash
            raise ModelError(
                f"{flag} {text}: calling it with options {options} raised "
                f"{type(error).__name__}: {error}"
            ) from error
        if not isinstance(model, nn.Module):
            raise ModelError(
                f"{flag} {text} returned a {type(model).__name__}; it must return a "
                "torch.nn.Module."
            )
        record = {"source": "factory", "options": options}
    else:
        raise ModelError(
            f"{flag} {text!r}: expected a model name ({', '.join(ZOO)}) or "
            f"package.module:function, e.g. {flag} mynets:build."
        )
    record = {"spec": text, **record, "parameters": count_parameters(model)}
    return model, record

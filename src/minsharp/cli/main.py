"""The ``minsharp`` command line: ``measure``, ``measures``, ``study``, ``report``, ``demo``.

``minsharp measure`` loads a network (a model of :data:`minsharp.models.ZOO` or a factory
``package.module:function``) and its weights, a labelled data set, and computes registered
sharpness measures, printing a table and optionally writing every result with its provenance
as JSON. ``minsharp study randomized-labels|batch-size|bn-sharpness``, ``minsharp report``
and ``minsharp demo`` (the randomized-label study's demo preset) live in
:mod:`minsharp.cli.study`. Every problem with the arguments, files, model or data ends
the command with exit status 2 and one ``minsharp: error: …`` line.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import datetime
import difflib
import importlib
import importlib.metadata
import io
import math
import os
import re
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from minsharp import distributed
from minsharp.cli.common import resolve_device
from minsharp.cli.study import add_study_parsers
from minsharp.data.digits import load_digits
from minsharp.data.mnist import load_mnist_split
from minsharp.errors import DataError, MinsharpError, ModelError
from minsharp.io import load_weights, read_labelled_file, sha256_file, write_json_atomic
from minsharp.measures.registry import (
    SYMMETRIES,
    MeasureResult,
    available,
    check_model_requirements,
    measure,
    spec,
)
from minsharp.models import ZOO, build_model, count_parameters

#: Measured when ``--measures`` is not given: those of these that are registered.
DEFAULT_MEASURES = ("minimum_sharpness", "normalized_sharpness", "hessian_trace")

_FACTORY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_BARE_WORD = re.compile(r"[A-Za-z_][\w\-./]*")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_DATA_FORMS = "digits, mnist:DIR or file:PATH (.safetensors, .npz or .pt)"


@dataclass
class LoadedData:
    """The labelled examples ``minsharp measure`` runs on, and where they came from."""

    inputs: Tensor
    labels: Tensor
    num_classes: int
    """The data set's class count (10 for digits and MNIST, 1 + largest label for files)."""
    record: dict[str, Any] = field(default_factory=dict)
    """What the JSON output says about the data."""


def parse_value(text: str, *, flag: str) -> Any:
    """A command-line option value: a Python literal, or a bare word taken as a string.

    ``3``, ``1e-3``, ``[64, 32]``, ``'text'`` and ``None`` are read by
    :func:`ast.literal_eval`; ``true``/``false``/``none`` in any case are booleans and
    ``None``; other bare words (``adaptive``, ``runs/a.pt``) are strings.

    Raises:
        MinsharpError: the value is neither (an unbalanced bracket, say).
    """
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    lowered = text.strip().lower()
    if lowered in ("true", "false", "none"):
        return {"true": True, "false": False, "none": None}[lowered]
    if _BARE_WORD.fullmatch(text):
        return text
    raise MinsharpError(
        f"{flag}: cannot read the value {text!r}; give a Python literal (3, 1e-3, [64, 32], "
        "True, 'text') or a bare word."
    )


def parse_key_values(pairs: Sequence[str], *, flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` strings as a dict, values read by :func:`parse_value`.

    Raises:
        MinsharpError: a pair without ``=``, a key that is not an identifier, or a key twice.
    """
    options: dict[str, Any] = {}
    for pair in pairs:
        key, equals, text = pair.partition("=")
        key = key.strip()
        if not equals or not key.isidentifier():
            raise MinsharpError(f"{flag} {pair!r}: expected KEY=VALUE, e.g. {flag} bias=False.")
        if key in options:
            raise MinsharpError(f"{flag}: {key!r} is given twice.")
        options[key] = parse_value(text, flag=f"{flag} {key}")
    return options


def select_measures(text: str | None) -> list[str]:
    """The measure names of ``--measures a,b,c``, checked; the defaults when not given.

    Raises:
        MinsharpError: an unknown name (with suggestions and the list of measures).
    """
    if text is None:
        names = [name for name in DEFAULT_MEASURES if name in available()]
        if not names:
            raise MinsharpError(
                f"none of the default measures is registered; choose with --measures from: "
                f"{', '.join(available())}."
            )
        return names
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not names:
        raise MinsharpError(f"--measures is empty; choose from: {', '.join(available())}.")
    for name in names:
        spec(name)
    return names


def measure_options(
    names: Sequence[str], pairs: Sequence[str], shared: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Each chosen measure's options, from ``--option MEASURE.KEY=VALUE`` and shared flags.

    ``shared`` (``batch_size``, ``progress``) goes to every measure that has the option,
    unless ``--option`` sets it for that measure.

    Raises:
        MinsharpError: a malformed pair, a measure that is not among ``names``, an option
            the measure does not have (the message lists its options), or a key twice.
    """
    options: dict[str, dict[str, Any]] = {name: {} for name in names}
    for pair in pairs:
        target, equals, text = pair.partition("=")
        name, dot, key = target.strip().partition(".")
        if not equals or not dot or not name or not key.isidentifier():
            raise MinsharpError(
                f"--option {pair!r}: expected MEASURE.KEY=VALUE, e.g. --option "
                "minimum_sharpness.batch_size=128."
            )
        if name not in options:
            spec(name)  # an unknown measure: say so, with suggestions
            raise MinsharpError(
                f"--option {pair!r} is for measure {name!r}, which is not among the measures "
                f"to compute ({', '.join(names)}); add it to --measures."
            )
        defaults = spec(name).defaults
        if key not in defaults:
            accepted = ", ".join(f"{k}={v!r}" for k, v in defaults.items()) or "(none)"
            raise MinsharpError(
                f"--option {pair!r}: measure {name!r} has no option {key!r}; its options "
                f"are: {accepted}."
            )
        if key in options[name]:
            raise MinsharpError(f"--option: {name}.{key} is given twice.")
        options[name][key] = parse_value(text, flag=f"--option {name}.{key}")
    for name in names:
        defaults = spec(name).defaults
        for key, value in shared.items():
            if key in defaults and key not in options[name] and value is not None:
                options[name][key] = value
    return options


#: More classes than this, read off the labels of a ``file:`` data set, are taken for a
#: mistake (a label column holding ids or values) unless --num-classes confirms them.
MAX_INFERRED_CLASSES = 100_000


def load_data(text: str, split: str | None, examples: int | None) -> LoadedData:
    """The labelled examples of ``--data`` (first ``examples`` of them, if given).

    ``digits`` is scikit-learn's digits (flat 64 features in [0, 1]; ``split`` ``train`` by
    default, the seeded 75 % / 25 % split of :func:`~minsharp.data.load_digits`);
    ``mnist:DIR`` the IDX files in ``DIR`` (``split`` ``test`` by default), normalised to
    ``(x − 0.5)/0.5`` as in the Minimum Sharpness paper; ``file:PATH`` a file of tensors
    ``inputs`` and ``labels`` (see :func:`minsharp.io.read_labelled_file`).

    Raises:
        DataError: an unknown form, a missing or malformed file, ``split`` given for a file,
            or fewer examples than asked for.
    """
    source, colon, location = text.partition(":")
    location = os.path.expanduser(location)
    if source == "digits" and not colon:
        chosen = split or "train"
        train, test = load_digits()
        inputs, labels = train if chosen == "train" else test
        record: dict[str, Any] = {"source": "digits", "split": chosen}
        num_classes = 10
    elif source == "mnist" and location:
        chosen = split or "test"
        inputs, labels = load_mnist_split(location, chosen, normalize=True)
        record = {
            "source": "mnist",
            "directory": str(Path(location).resolve()),
            "split": chosen,
            "normalization": "(x - 0.5) / 0.5, x in [0, 1]",
        }
        num_classes = 10
    elif source == "file" and location:
        if split is not None:
            raise DataError(f"--split applies to digits and mnist, not to --data {text}.")
        inputs, labels = read_labelled_file(location)
        record = {
            "source": "file",
            "path": str(Path(location).resolve()),
            "sha256": sha256_file(location),
        }
        num_classes = int(labels.max()) + 1 if labels.numel() else 0
    else:
        raise DataError(f"--data {text!r}: expected {_DATA_FORMS}.")
    available_examples = int(labels.shape[0])
    if examples is not None:
        if examples < 1:
            raise DataError(f"--examples must be positive; got {examples}.")
        if examples > available_examples:
            raise DataError(
                f"--examples {examples}: --data {text} has only {available_examples} examples."
            )
        inputs, labels = inputs[:examples], labels[:examples]
    if labels.shape[0] == 0:
        raise DataError(f"--data {text} holds no examples.")
    record.update(
        spec=text,
        num_examples=int(labels.shape[0]),
        input_shape=list(inputs.shape[1:]),
        first_examples=examples is not None,
    )
    return LoadedData(inputs, labels, num_classes, record)


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
            close = difflib.get_close_matches(text, ZOO, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ModelError(
                f"unknown model {text!r}.{hint} Give a model of the zoo ({', '.join(ZOO)}) or "
                "your own factory as package.module:function."
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


def run_measures(
    model: nn.Module,
    data: tuple[Tensor, Tensor],
    options: dict[str, dict[str, Any]],
    *,
    keep_going: bool,
) -> tuple[list[MeasureResult], list[dict[str, str]]]:
    """Compute each measure; fail fast unless ``keep_going``.

    Returns:
        The results, and for ``keep_going`` the failures (name, error type, message).

    Raises:
        MinsharpError: a measure failed (without ``keep_going``), naming the measure.
    """
    results: list[MeasureResult] = []
    failures: list[dict[str, str]] = []
    for name, chosen in options.items():
        try:
            try:
                results.append(measure(name, model, data, **chosen))
            except torch.OutOfMemoryError as error:
                raise MinsharpError(
                    f"out of memory ({str(error).splitlines()[0]}); lower --batch-size."
                ) from error
        except Exception as error:  # a measure's failure must not lose the others' results
            message = str(error)
            if not isinstance(error, MinsharpError):
                message = (
                    f"internal error ({type(error).__name__}: {error}); please report it to the "
                    "minsharp developers with the command line"
                )
            if not keep_going:
                raise MinsharpError(f"measure {name!r} failed: {message}") from error
            failures.append({"name": name, "error": type(error).__name__, "message": message})
    return results, failures


def format_number(value: Any) -> str:
    """A short rendering of a number (4 significant digits), or ``str(value)``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def certificate_summary(certificate: dict[str, Any] | None) -> str:
    """One line for a solver certificate: its method, then ``key=value`` pairs."""
    if not certificate:
        return "-"
    parts = [str(certificate["method"])] if "method" in certificate else []
    parts += [f"{k}={format_number(v)}" for k, v in certificate.items() if k != "method"]
    return ", ".join(parts)


def print_table(results: Sequence[MeasureResult], failures: Sequence[dict[str, str]]) -> None:
    """Print measure, value, invariances, seconds and certificate, one row per measure."""
    rows = [("measure", "value", "invariances", "seconds", "certificate")]
    rows += [
        (
            result.name,
            f"{result.value:.6g}",
            ", ".join(result.invariances) or "none",
            f"{result.seconds:.2f}",
            certificate_summary(result.certificate),
        )
        for result in results
    ]
    rows += [(failure["name"], "FAILED", "", "", failure["error"]) for failure in failures]
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    lines = [
        "  ".join(
            [
                row[0].ljust(widths[0]),
                row[1].rjust(widths[1]),
                row[2].ljust(widths[2]),
                row[3].rjust(widths[3]),
                row[4],
            ]
        ).rstrip()
        for row in rows
    ]
    # The certificate column runs long: rule off the fixed columns and the certificate heading.
    lines.insert(1, "-" * len(lines[0]))
    print("\n".join(lines))
    for failure in failures:
        print(f"\n{failure['name']} failed: {failure['message']}")


def list_measures(_: argparse.Namespace | None = None) -> None:
    """Print every registered measure: summary, invariances, requirements and options."""
    for name in available():
        chosen = spec(name)
        invariances = ", ".join(s for s in SYMMETRIES if s in chosen.invariances) or "none"
        requires = ", ".join(sorted(chosen.requires)) or "nothing special"
        options = " ".join(f"{k}={v!r}" for k, v in chosen.defaults.items()) or "(none)"
        print(f"{name}{'  (stochastic: seeded Monte Carlo)' if chosen.stochastic else ''}")
        print(textwrap.indent(textwrap.fill(chosen.summary, 88), "    "))
        print(f"    invariant to: {invariances}")
        print(f"    requires:     {requires}")
        print(f"    options:      {options}")
        print(f"    reference:    {chosen.reference}\n")


def _package_version() -> str:
    try:
        return importlib.metadata.version("minsharp")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _check_output(path: Path | None) -> None:
    """Refuse an ``--output`` that cannot be written, before any computing."""
    if path is None:
        return
    if path.is_dir():
        raise MinsharpError(f"--output {path} is a directory; give a file name.")
    if not path.parent.is_dir():
        raise MinsharpError(f"--output {path}: directory {path.parent} does not exist.")


def measure_command(args: argparse.Namespace) -> None:
    """``minsharp measure``: load model, weights and data, compute, print, write JSON."""
    if args.list:
        list_measures()
        return
    if args.model is None or args.data is None:
        raise MinsharpError("minsharp measure needs --model and --data (or --list).")
    if args.weights is None and not args.random_init:
        raise MinsharpError(
            "give the trained weights with --weights FILE (or --random-init to try the "
            "command on freshly initialised weights)."
        )
    if args.weights is not None and args.random_init:
        raise MinsharpError("--weights and --random-init exclude each other; give one.")
    if args.threads is not None and args.threads < 1:
        raise MinsharpError(f"--threads must be positive; got {args.threads}.")
    if args.batch_size is not None and args.batch_size < 1:
        raise MinsharpError(f"--batch-size must be positive; got {args.batch_size}.")
    if args.num_classes is not None and args.num_classes < 1:
        raise MinsharpError(f"--num-classes must be positive; got {args.num_classes}.")
    if not -(2**63) <= args.seed < 2**64:
        raise MinsharpError(
            f"--seed must be an integer in [-2**63, 2**64), the range of torch's generators; "
            f"got {args.seed}."
        )
    device = distributed.local_device(resolve_device(args.device))
    joined = distributed.start(device)
    try:
        # One report per job: the other ranks compute their share and stay silent.
        silent = contextlib.redirect_stdout(io.StringIO())
        with silent if distributed.rank() else contextlib.nullcontext():
            _measure(args, device)
    except BaseException:
        if joined:
            distributed.stop(wait=False)
        raise
    if joined:
        distributed.stop()


def _measure(args: argparse.Namespace, device: torch.device) -> None:
    """Compute and report the measures of ``measure_command`` on ``device``."""
    names = select_measures(args.measures)
    progress = args.progress and distributed.rank() == 0
    shared = {"batch_size": args.batch_size, "progress": progress or None}
    options = measure_options(names, args.option, shared)
    model_options = parse_key_values(args.model_option, flag="--model-option")
    output = Path(args.output).expanduser() if args.output and distributed.rank() == 0 else None
    _check_output(output)
    dtype = _DTYPES[args.dtype]
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    data = load_data(args.data, args.split, args.examples)
    num_classes = args.num_classes or data.num_classes
    if args.num_classes is None and num_classes > MAX_INFERRED_CLASSES:
        raise MinsharpError(
            f"--data {args.data}: the largest label is {num_classes - 1}, which would build a "
            f"model with {num_classes} outputs. Check the labels, or pass --num-classes "
            f"{num_classes} if that is intended."
        )
    if args.random_init:
        torch.manual_seed(args.seed)
    model, model_record = make_model(args.model, model_options, data.inputs.shape[1:], num_classes)
    weights_record: dict[str, Any] | None = None
    if args.weights is not None:
        weights = Path(args.weights).expanduser()
        load_weights(model, weights, model_name=args.model)
        weights_record = {"path": str(weights.resolve()), "sha256": sha256_file(weights)}
    if not args.keep_going:  # fail before computing anything (measure() checks it too)
        for name in names:
            check_model_requirements(name, model)
    model.eval()
    model.to(device=device, dtype=dtype)
    inputs = data.inputs.to(device=device, dtype=dtype)
    labels = data.labels.to(device=device)
    data.inputs, data.labels = inputs, labels
    model_record["num_classes"] = check_model_fits(model, data, args.model)

    print(
        f"model    {args.model}, {model_record['parameters']:,} parameters, "
        + (f"weights {args.weights}" if args.weights else f"random init (seed {args.seed})")
    )
    split = f" ({data.record['split']} split)" if "split" in data.record else ""
    print(
        f"data     {args.data}{split}: {data.record['num_examples']} examples of shape "
        f"{tuple(data.record['input_shape'])}"
    )
    threads = torch.get_num_threads()
    processes = distributed.world_size()
    print(
        f"compute  {args.dtype} on {device}, {threads} thread{'s' if threads > 1 else ''}"
        + (f" in each of {processes} processes (torch.distributed)" if processes > 1 else "")
        + "\n"
    )
    results, failures = run_measures(model, (inputs, labels), options, keep_going=args.keep_going)
    print_table(results, failures)
    if output is not None:
        write_json_atomic(
            output,
            {
                "minsharp_version": _package_version(),
                "torch_version": torch.__version__,
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                "argv": args.argv,
                "model": model_record,
                "weights": weights_record,
                "random_init_seed": args.seed if args.random_init else None,
                "data": data.record,
                "dtype": args.dtype,
                "device": str(device),
                "threads": torch.get_num_threads(),
                "processes": distributed.world_size(),
                "measures": [result.to_dict() for result in results],
                "failures": failures,
            },
        )
        print(f"\nwrote {output}")
    if failures:
        raise MinsharpError(
            f"{len(failures)} of {len(options)} measures failed: "
            f"{', '.join(failure['name'] for failure in failures)}."
        )


_MEASURE_DESCRIPTION = """\
Compute sharpness measures of a trained network on labelled data.

The network is a model of minsharp's zoo (--model NAME, built for the data's input shape and
class count) or your own: --model package.module:function is imported (the current directory
first) and called with the --model-option KEY=VALUE pairs. Its weights come from --weights:
a .safetensors file, or a torch.save file holding a state dict or a checkpoint with it under
"state_dict" or "model". Files are read without unpickling code (torch.load with
weights_only=True); keys and shapes must match the model exactly. --random-init skips the
weights, to try the command out: the values then describe an untrained network.

Data (--data): "digits" (scikit-learn's digits, 64 features in [0, 1]; --split train by
default), "mnist:DIR" (the IDX files in DIR, normalised (x - 0.5)/0.5 as in the Minimum
Sharpness paper; --split test by default) or "file:PATH" (.safetensors, .npz or torch.save
file with tensors "inputs" (floating, (N, ...)) and "labels" (integer, (N,))).

Option values are Python literals (3, 1e-3, [64, 32], True) or bare words (strings). The
model is put in eval mode. A measure that fails stops the command with exit status 2 and
nothing is written; with --keep-going the others are still computed, the failures are
recorded in the JSON, and the exit status is 2.
"""

_MEASURE_EPILOG = """\
examples:
  minsharp measure --model small_mlp --weights net.safetensors --data digits --output out.json
  minsharp measure --model lenet --weights lenet.pt --data mnist:~/mnist --examples 1000 \\
      --measures minimum_sharpness,hessian_trace --option minimum_sharpness.batch_size=128
  minsharp measure --model mynets:build --model-option width=128 --weights w.pt \\
      --data file:batch.safetensors
  minsharp measures          # the registered measures, their invariances and options
"""


def _add_measure_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "measure",
        help="measure a trained network's sharpness on labelled data",
        description=_MEASURE_DESCRIPTION,
        epilog=_MEASURE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model", metavar="NAME|MODULE:FUNCTION", help=f"zoo model ({', '.join(ZOO)}) or factory"
    )
    model.add_argument(
        "--model-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model option, repeatable (e.g. bias=False, hidden=[64,32])",
    )
    model.add_argument(
        "--num-classes",
        type=int,
        metavar="K",
        help="outputs of a zoo model (default: 10 for digits/mnist, 1 + largest label for file:)",
    )
    model.add_argument("--weights", metavar="FILE", help="trained weights (.safetensors or .pt)")
    model.add_argument(
        "--random-init",
        action="store_true",
        help="use freshly initialised weights instead of --weights (for trying things out)",
    )
    model.add_argument("--seed", type=int, default=0, help="seed of --random-init (0)")
    data = parser.add_argument_group("data")
    data.add_argument("--data", metavar="SPEC", help=_DATA_FORMS)
    data.add_argument(
        "--split",
        choices=("train", "test"),
        help="split of digits (default train) or mnist (default test)",
    )
    data.add_argument("--examples", type=int, metavar="N", help="use the first N examples")
    measures = parser.add_argument_group("measures")
    measures.add_argument(
        "--measures",
        metavar="A,B,…",
        help=f"measures to compute (default: those of {', '.join(DEFAULT_MEASURES)} registered)",
    )
    measures.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="MEASURE.KEY=VALUE",
        help="measure option, repeatable (see `minsharp measures`)",
    )
    measures.add_argument(
        "--batch-size", type=int, metavar="B", help="batch_size of every measure that has one"
    )
    measures.add_argument("--progress", action="store_true", help="show progress bars")
    measures.add_argument(
        "--keep-going", action="store_true", help="record failed measures and go on"
    )
    measures.add_argument(
        "--list", action="store_true", help="list the registered measures and exit"
    )
    run = parser.add_argument_group("computation and output")
    run.add_argument("--dtype", choices=tuple(_DTYPES), default="float32", help="(float32)")
    run.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (cpu)")
    run.add_argument("--threads", type=int, metavar="N", help="CPU threads (torch's default)")
    run.add_argument("--output", metavar="FILE", help="write every result as JSON to FILE")
    parser.set_defaults(run=measure_command)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``minsharp`` command."""
    parser = argparse.ArgumentParser(
        prog="minsharp", description="Scale-invariant sharpness of neural-network minima."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_study_parsers(commands)
    _add_measure_parser(commands)
    list_parser = commands.add_parser(
        "measures", help="list the registered measures, their invariances and options"
    )
    list_parser.set_defaults(run=list_measures)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args.run(args)
    except MinsharpError as error:
        print(f"minsharp: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("minsharp: interrupted.", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the output was piped into `head` or similar, which exited
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``minsharp measure`` and ``minsharp measures``: sharpness of a trained network on data.

``minsharp measure`` loads a network (:mod:`minsharp.cli.loading`) and its weights, the
labelled examples of a data spec (:func:`minsharp.data.sources.load_examples`), computes
registered sharpness measures, prints a table and optionally writes every result with its
provenance as JSON. ``minsharp measures`` lists the registered measures.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import datetime
import io
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from minsharp import distributed
from minsharp.cli.common import resolve_device
from minsharp.cli.loading import check_model_fits, make_model
from minsharp.cli.printing import list_measures, print_table
from minsharp.data.sources import DATA_FORMS, LoadedData, load_examples
from minsharp.errors import MinsharpError, ModelError
from minsharp.io import (
    STDOUT,
    check_output,
    jsonable,
    load_weights,
    package_version,
    sha256_file,
    write_output,
)
from minsharp.measures.registry import (
    MeasureResult,
    available,
    check_model_requirements,
    measure,
    spec,
)
from minsharp.models import ZOO
from minsharp.training.checkpoint import check_recorded_digest

#: The ``format`` tag and version of the JSON ``minsharp measure --output`` writes.
MEASURE_FORMAT = "minsharp-measure"
MEASURE_VERSION = 1

#: Measured when ``--measures`` is not given: those of these that are registered.
DEFAULT_MEASURES = ("minimum_sharpness", "normalized_sharpness", "hessian_trace")

_BARE_WORD = re.compile(r"[A-Za-z_][\w\-./]*")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


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


def run_measures(
    model: nn.Module,
    data: tuple[Tensor, Tensor],
    options: dict[str, dict[str, Any]],
    *,
    keep_going: bool,
) -> tuple[list[MeasureResult], list[dict[str, str]]]:
    """Compute each measure; fail fast unless ``keep_going``.

    A measure whose requirement the model lacks (batch-norm) is found before this, by
    :func:`_not_applicable`, and is not in ``options``.

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
    """Compute and report the measures of ``measure_command`` on ``device``.

    With ``--output -`` the JSON alone goes to standard output, the table to stderr.
    """
    names = select_measures(args.measures)
    progress = args.progress and distributed.rank() == 0
    shared = {"batch_size": args.batch_size, "progress": progress or None}
    options = measure_options(names, args.option, shared)
    model_options = parse_key_values(args.model_option, flag="--model-option")
    output = args.output if args.output and distributed.rank() == 0 else None
    if output is not None:
        check_output(output)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    table = contextlib.redirect_stdout(sys.stderr) if output == STDOUT else contextlib.nullcontext()
    with table:
        data = load_examples(args.data, args.split, args.examples)
        model, records = _load_network(args, model_options, data)
        model.eval()
        model.to(device=device, dtype=_DTYPES[args.dtype])
        data.inputs = data.inputs.to(device=device, dtype=_DTYPES[args.dtype])
        data.labels = data.labels.to(device=device)
        records["model"]["num_classes"] = check_model_fits(model, data, args.model)
        _print_setup(args, records["model"], data, device)
        skipped = _not_applicable(names, model)
        results, failures = run_measures(
            model,
            (data.inputs, data.labels),
            {name: chosen for name, chosen in options.items() if name not in skipped},
            keep_going=args.keep_going,
        )
        print_table(results, failures, skipped)
    if output is not None:
        records["outcome"] = {"results": results, "failures": failures, "skipped": skipped}
        _write_results(output, args, records, data, device)
        if output != STDOUT:
            print(f"\nwrote {output}")
    if failures:
        raise MinsharpError(
            f"{len(failures)} of {len(options)} measures failed: "
            f"{', '.join(failure['name'] for failure in failures)}."
        )
    if not results:
        raise MinsharpError(
            f"none of the measures applies to this model ({', '.join(skipped)}); choose "
            "others with --measures (see `minsharp measures` for what each requires)."
        )


def _not_applicable(names: Sequence[str], model: nn.Module) -> dict[str, str]:
    """The measures of ``names`` whose requirements ``model`` lacks, with the reason."""
    skipped: dict[str, str] = {}
    for name in names:
        try:
            check_model_requirements(name, model)
        except MinsharpError as error:
            skipped[name] = str(error)
    return skipped


def _load_network(
    args: argparse.Namespace, model_options: dict[str, Any], data: LoadedData
) -> tuple[nn.Module, dict[str, Any]]:
    """The model of ``--model`` with the ``--weights`` (or seeded random ones) loaded.

    Returns:
        The model, and the ``model`` and ``weights`` records of the JSON output.
    """
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
        digest = sha256_file(weights, what="weights file", error=ModelError)
        check_recorded_digest(weights, digest)  # a checkpoint's weights, checked if recorded
        load_weights(model, weights, model_name=args.model)
        weights_record = {"path": str(weights.resolve()), "sha256": digest}
    return model, {"model": model_record, "weights": weights_record}


def _print_setup(
    args: argparse.Namespace, model_record: dict[str, Any], data: LoadedData, device: torch.device
) -> None:
    """The three lines above the table: the model, the data and the computation."""
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


def _write_results(
    output: str,
    args: argparse.Namespace,
    records: dict[str, Any],
    data: LoadedData,
    device: torch.device,
) -> None:
    """Write every result, failure and inapplicable measure with its provenance as JSON.

    ``records`` holds the ``model`` and ``weights`` records and the ``outcome`` (results,
    failures and the measures that do not apply, with the reason).
    """
    outcome = records["outcome"]
    content = {
        "format": MEASURE_FORMAT,
        "version": MEASURE_VERSION,
        "minsharp_version": package_version(),
        "torch_version": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "argv": args.argv,
        "model": records["model"],
        "weights": records["weights"],
        "random_init_seed": args.seed if args.random_init else None,
        "data": data.record,
        "dtype": args.dtype,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "processes": distributed.world_size(),
        "measures": [result.to_dict() for result in outcome["results"]],
        "failures": list(outcome["failures"]),
        "not_applicable": [
            {"name": name, "reason": reason} for name, reason in outcome["skipped"].items()
        ],
    }
    write_output(output, json.dumps(jsonable(content), indent=2, allow_nan=False) + "\n")


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
default), "mnist:DIR" or "fashion-mnist:DIR" (the IDX files in DIR, normalised (x - 0.5)/0.5
as in the Minimum Sharpness paper; --split test by default), "cifar10:DIR" (the binary batch
files in DIR or DIR/cifar-10-batches-bin, normalised per channel; --split test by default)
or "file:PATH" (.safetensors, .npz or torch.save file with tensors "inputs" (floating,
(N, ...)) and "labels" (integer, (N,))). A name without ":DIR" reads its cache folder,
$MINSHARP_DATA/NAME or ~/.cache/minsharp/NAME, where the studies keep it.

Option values are Python literals (3, 1e-3, [64, 32], True) or bare words (strings). The
model is put in eval mode. A measure that fails stops the command with exit status 2 and
nothing is written; with --keep-going the others are still computed, the failures are
recorded in the JSON, and the exit status is 2. A measure that does not apply to the model
(it requires batch-norm layers or a chain of layers the model lacks, see `minsharp
measures`) costs the others nothing: it is shown as n/a and recorded with the reason under
"not_applicable" in the JSON; the exit status is 0 when every other measure was computed,
and 2 when none applied.

--output FILE writes the JSON ("format": "minsharp-measure", "version": 1): through a
symbolic link into its target (atomically there), directly into a FIFO or character device
(never replacing it), atomically into a plain file; --output - prints it on standard output
(and the table on stderr).
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


def add_measure_parsers(commands: Any) -> None:
    """Add the ``measure`` and ``measures`` subcommands to ``commands`` (argparse subparsers)."""
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
    _add_data_arguments(parser.add_argument_group("data"))
    _add_measures_arguments(parser.add_argument_group("measures"))
    run = parser.add_argument_group("computation and output")
    run.add_argument("--dtype", choices=tuple(_DTYPES), default="float32", help="(float32)")
    run.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (cpu)")
    run.add_argument("--threads", type=int, metavar="N", help="CPU threads (torch's default)")
    run.add_argument(
        "--output", metavar="FILE|-", help="write every result as JSON to FILE (-: stdout)"
    )
    parser.set_defaults(run=measure_command)
    list_parser = commands.add_parser(
        "measures", help="list the registered measures, their invariances and options"
    )
    list_parser.add_argument(
        "--json",
        action="store_true",
        help="as JSON: name, summary, invariances, requires, stochastic, options (defaults)",
    )
    list_parser.set_defaults(run=list_measures)


def _add_data_arguments(data: argparse._ArgumentGroup) -> None:
    data.add_argument("--data", metavar="SPEC", help=DATA_FORMS)
    data.add_argument(
        "--split",
        choices=("train", "test"),
        help="split of digits (default train) or mnist, fashion-mnist, cifar10 (default test)",
    )
    data.add_argument("--examples", type=int, metavar="N", help="use the first N examples")


def _add_measures_arguments(measures: argparse._ArgumentGroup) -> None:
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

"""The study commands of the ``minsharp`` command line: ``study``, ``report`` and ``demo``.

``minsharp study <kind>`` (``randomized-labels``, ``batch-size``, ``bn-sharpness``; see
:mod:`minsharp.study.kinds`) builds the kind's configuration from a preset, an optional JSON
config file and override flags (in that order), runs it with :func:`minsharp.study.core.runner.
run_study` and writes the report; ``minsharp report DIR`` rewrites a study's report, for the
kind recorded in ``DIR/study.json``; ``minsharp demo`` is the randomized-label ``demo``
preset into ``./minsharp-demo``.
Every problem ends the command with exit status 2 and one ``minsharp: error: …`` line
(:class:`~minsharp.errors.MinsharpError`, handled by :func:`minsharp.cli.main.main`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from minsharp import distributed
from minsharp.cli.common import resolve_device
from minsharp.cli.measure import parse_key_values
from minsharp.errors import MinsharpError, StudyError
from minsharp.models import ZOO, is_factory_spec
from minsharp.study import kinds
from minsharp.study.core import launcher as launchers
from minsharp.study.core import runner
from minsharp.study.core.config import (
    DTYPES,
    GridConfig,
    ModelPlan,
    named_model,
    read_config_file,
)
from minsharp.study.core.kind import Flag
from minsharp.study.randomized_labels.study import RANDOMIZED_LABELS

#: Where ``minsharp demo`` writes its study.
DEMO_DIRECTORY = "minsharp-demo"

#: Bootstrap resamples of the report's intervals, unless ``--resamples`` says otherwise.
RESAMPLES = 2000


def study_config(args: argparse.Namespace, *, preset_name: str, kind: str) -> Any:
    """The study of a command line: preset, then ``--config`` file, then override flags.

    Works for every kind of :data:`minsharp.study.kinds.KINDS`: flags a kind's parser does
    not define are absent from ``args`` and ignored.

    Raises:
        StudyError: an unreadable config file, a malformed override or an invalid result.
    """
    entry = kinds.KINDS[kind]
    config = entry.preset(preset_name)
    if getattr(args, "config", None):
        config = read_config_file(args.config, base=config, presets=entry.preset)
    return apply_overrides(config, args, entry.study.flags)


def apply_overrides(config: Any, args: argparse.Namespace, own: Sequence[Flag] = ()) -> Any:
    """``config`` with the override flags of ``args`` applied (absent flags ignored).

    ``own`` are the kind's flags (:attr:`~minsharp.study.core.kind.StudyKind.flags`), each
    setting its field. Training flags (``--epochs``, ``--batch-size``, ``--lr``,
    ``--target-accuracy``) set the value for every model, replacing the models' own settings.

    Raises:
        StudyError: a malformed flag value or an invalid result.
    """
    values: dict[str, Any] = {
        flag.field: flag.value(getattr(args, flag.dest))
        for flag in own
        if getattr(args, flag.dest, None) is not None
    }
    values.update(_shared_overrides(config, args))
    models = _with_training_flags(values.get("models", config.models), args, config, values)
    if getattr(args, "hidden", None) is not None:
        if not any(model.zoo == "mlp" for model in models):
            raise StudyError(
                "--hidden sets the widths of `mlp` models, and this study has none "
                f"({', '.join(f'{m.name} ({m.zoo})' for m in models)})."
            )
        values["models"] = tuple(
            dataclasses.replace(model, options={**model.options, "hidden": list(args.hidden)})
            if model.zoo == "mlp"
            else model
            for model in models
        )
    return dataclasses.replace(config, **values) if values else config


def _shared_overrides(config: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The fields that the override flags every kind has set (training aside)."""
    values: dict[str, Any] = {}
    if getattr(args, "seeds", None) is not None:
        values["seeds"] = tuple(_seeds(args.seeds))
    if getattr(args, "models", None) is not None:
        values["models"] = tuple(_models(args.models, config))
    if getattr(args, "measures", None) is not None:
        names = [name.strip() for name in args.measures.split(",") if name.strip()]
        values["measures"] = tuple(names)
        values["measure_options"] = {
            name: options for name, options in config.measure_options.items() if name in names
        }
    for key in ("dataset", "train_size", "test_size", "measure_examples", "dtype"):
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    return values


def _with_training_flags(
    models: Sequence[ModelPlan], args: argparse.Namespace, config: Any, values: dict[str, Any]
) -> Sequence[ModelPlan]:
    """``models`` without the settings the training flags set, which go into ``values``.

    A flag sets the value for every model, so it replaces the models' own settings.
    """
    flags = {
        "epochs": "epochs",
        "batch_size": "batch_size",
        "lr": "lr",
        "target_train_accuracy": "target_accuracy",
    }
    training = {
        key: getattr(args, flag)
        for key, flag in flags.items()
        if getattr(args, flag, None) is not None
    }
    if training.get("epochs", 1) < 1:
        raise StudyError(f"--epochs must be a positive integer; got {training['epochs']}.")
    if training.get("target_train_accuracy") == "none":
        training["target_train_accuracy"] = None
    if not training:
        return models
    values["training"] = {**config.training, **training}
    values["models"] = tuple(
        dataclasses.replace(
            model, training={k: v for k, v in model.training.items() if k not in training}
        )
        for model in models
    )
    return values["models"]


def _seeds(text: str) -> list[int]:
    """``0,1,2`` or ranges ``0-9`` (inclusive), mixed."""
    seeds: list[int] = []
    for part in (part.strip() for part in text.split(",")):
        if not part:
            continue
        first, dash, last = part.partition("-")
        try:
            bounds = (int(first), int(last)) if dash else (int(part), int(part))
        except ValueError:
            raise StudyError(
                f"--seeds must be non-negative integers or ranges, e.g. 0,1,2 or 0-9; got {text!r}."
            ) from None
        if bounds[1] < bounds[0]:
            raise StudyError(
                f"--seeds {part}: the range is reversed (a range runs from the smaller seed "
                f"to the larger); write {bounds[1]}-{bounds[0]}."
            )
        seeds += range(bounds[0], bounds[1] + 1)
    if not seeds:
        raise StudyError("--seeds is empty.")
    return seeds


def _models(text: str, config: GridConfig) -> list[ModelPlan]:
    """Models named by ``--models``: the preset's own (by name), else zoo networks or factories.

    A factory ``package.module:function`` is resolved as ``measure --model`` resolves it
    (:func:`minsharp.models.make_model`: called with no options here; a config file's model
    entry gives it options).
    """
    own = {model.name: model for model in config.models}
    chosen = []
    for name in (part.strip() for part in text.split(",")):
        if not name:
            continue
        if name in own:
            chosen.append(own[name])
        elif name in ZOO or is_factory_spec(name):
            chosen.append(named_model(name))
        else:
            raise StudyError(
                f"--models: unknown model {name!r}; give models of the preset "
                f"({', '.join(own)}), of the zoo ({', '.join(ZOO)}) or your own factory as "
                "package.module:function."
            )
    if not chosen:
        raise StudyError("--models is empty.")
    return chosen


def resolve_study_device(text: str) -> torch.device:
    """``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        MinsharpError: an unknown or unavailable device.
    """
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return resolve_device(text)


def run_study_command(
    args: argparse.Namespace,
    *,
    preset_name: str,
    directory: str,
    kind: str,
) -> None:
    """Run a study of ``kind`` from parsed arguments, write its report and print its summary.

    Raises:
        MinsharpError: bad arguments, configuration, directory or data; or runs that failed
            (after the report is written).
    """
    if args.threads is not None:
        if args.threads < 1:
            raise MinsharpError(f"--threads must be positive; got {args.threads}.")
        torch.set_num_threads(args.threads)
    resamples = getattr(args, "resamples", RESAMPLES)
    if resamples < 1:
        raise MinsharpError(f"--resamples must be positive; got {resamples}.")
    config = study_config(args, preset_name=preset_name, kind=kind)
    launcher = study_launcher(args)
    # With a launcher, the jobs resolve --device on their nodes; here the data are only checked.
    device = (
        distributed.local_device(resolve_study_device(args.device))
        if launcher is None
        else torch.device("cpu")
    )
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    if preset_name == "paper" and device.type == "cpu" and launcher is None:
        print(
            f"note: the paper preset {kinds.KINDS[kind].study.paper_note}; on a CPU that takes "
            "days to weeks. Use --device cuda on a GPU machine, or --preset cpu.",
            file=sys.stderr,
        )
    output = Path(args.output or directory).expanduser()
    try:
        outcome = runner.run_study(
            kinds.KINDS[kind].study,
            config,
            output,
            data_root=args.data_dir,
            download=args.download,
            force=args.force,
            progress=progress,
            device=device,
            argv=getattr(args, "argv", None),
            launcher=launcher,
        )
    except KeyboardInterrupt:
        print(
            f"\nminsharp: interrupted. Finished runs are kept in {output}; run the same "
            "command again to resume.",
            file=sys.stderr,
        )
        raise
    _print_outcome(outcome, output, write_report=not args.no_report, resamples=resamples)


#: The job-option flags of ``--launcher slurm`` and the submitit parameter each one sets.
JOB_FLAGS = {
    "partition": "slurm_partition",
    "time": "timeout_min",
    "mem": "mem_gb",
    "cpus": "cpus_per_task",
    "gpus": "gpus_per_node",
}


def study_launcher(args: argparse.Namespace) -> launchers.SubmititLauncher | None:
    """The launcher of ``--launcher`` with its job options (``None``: runs here).

    The job flags (:data:`JOB_FLAGS`) and the ``--launcher-option KEY=VALUE`` pairs (any
    parameter of ``submitit.AutoExecutor.update_parameters``) set the job parameters.

    Raises:
        StudyError: an unknown launcher, job options for ``local``, or no submitit.
    """
    options = {
        parameter: getattr(args, flag)
        for flag, parameter in JOB_FLAGS.items()
        if getattr(args, flag, None) is not None
    }
    options.update(parse_key_values(args.launcher_option or [], flag="--launcher-option"))
    return launchers.make_launcher(
        args.launcher, options=options, device=args.device, threads=args.threads
    )


def _print_outcome(
    outcome: runner.StudyOutcome, output: Path, *, write_report: bool, resamples: int
) -> None:
    """Print what the study did, write its report unless told not to, and refuse failed runs.

    Raises:
        StudyError: runs failed (after the report is written).
    """
    elsewhere = f", {len(outcome.elsewhere)} left to other workers" if outcome.elsewhere else ""
    print(
        f"\n{len(outcome.trained)} runs trained, {len(outcome.reused)} reused, "
        f"{len(outcome.failed)} failed{elsewhere}, in {outcome.seconds / 60:.1f} min."
    )
    if outcome.measure_errors:
        print(f"{len(outcome.measure_errors)} measure evaluations failed (see the report):")
        for run, name, message in outcome.measure_errors[:10]:
            print(f"  {run} {name}: {message}")
    if outcome.unfinished:
        print(
            f"{len(outcome.unfinished)} runs are still being run by other workers; the last "
            f"worker to finish writes the report (or run `minsharp report {output}` then)."
        )
    elif write_report:
        print_report(output, resamples=resamples)
    if outcome.failed:
        raise StudyError(
            f"{len(outcome.failed)} runs failed to train ("
            + "; ".join(f"{run}: {message}" for run, message in list(outcome.failed.items())[:3])
            + "). Their errors are in runs/<run-id>/result.json; run the same command again "
            "to retry them."
        )


def print_report(directory: str | Path, *, resamples: int = RESAMPLES) -> None:
    """Write the report of the study in ``directory`` (any kind) and print its summary.

    The kind is the one ``study.json`` records (:func:`minsharp.study.kinds.write_report`):
    the correlation table of a randomized-label study, the verdicts of the others.
    """
    path, summary = kinds.write_report(directory, resamples=resamples)
    print(f"\n{summary}")
    print(f"\nreport: {path}")


def study_command(args: argparse.Namespace) -> None:
    """``minsharp study <kind>``: the kind is the subcommand's name."""
    run_study_command(
        args,
        preset_name=args.preset,
        directory=kinds.KINDS[args.study].study.default_directory(args.preset),
        kind=args.study,
    )


def demo_command(args: argparse.Namespace) -> None:
    """``minsharp demo``: the ``demo`` preset into ``./minsharp-demo``."""
    run_study_command(
        args, preset_name="demo", directory=DEMO_DIRECTORY, kind=RANDOMIZED_LABELS.name
    )


def report_command(args: argparse.Namespace) -> None:
    """``minsharp report DIR``."""
    if args.resamples < 1:
        raise MinsharpError(f"--resamples must be positive; got {args.resamples}.")
    print_report(args.directory, resamples=args.resamples)


# --------------------------------------------------------------------------- parsers


def _add_study_arguments(
    parser: argparse.ArgumentParser, *, kind: str, directory: str, threads: int | None
) -> None:
    """The override and running flags of ``study <kind>`` (and of ``demo``).

    The kind's own overrides (its :attr:`~minsharp.study.core.kind.StudyKind.flags`) around
    those every kind accepts (:func:`_add_shared_overrides`; ``--batch-size`` except where
    the grid sets it), then how the study runs (``--resamples`` where the report bootstraps).
    """
    study = kinds.KINDS[kind].study
    grid = parser.add_argument_group("overrides of the preset")
    for flag in study.flags:
        if not flag.after_shared:
            flag.add_to(grid)
    _add_shared_overrides(grid, batch_size="batch_size" not in study.grid_training)
    for flag in study.flags:
        if flag.after_shared:
            flag.add_to(grid)
    _add_running_arguments(
        parser, directory=directory, threads=threads, resamples=kinds.KINDS[kind].resamples
    )


def _add_shared_overrides(grid: argparse._ArgumentGroup, *, batch_size: bool) -> None:
    """Override flags every study kind accepts (``--batch-size`` optional)."""
    grid.add_argument("--seeds", metavar="S,S,…", help="trial seeds, e.g. 0,1,2 or 0-9")
    grid.add_argument(
        "--models",
        metavar="M,M,…",
        help=f"models of the preset, of the zoo ({', '.join(ZOO)}) or your own factories "
        "package.module:function, called with no arguments as measure --model calls them "
        "(the module on PYTHONPATH or in the current directory)",
    )
    grid.add_argument("--hidden", type=int, nargs="+", metavar="W", help="widths of mlp models")
    grid.add_argument("--measures", metavar="A,B,…", help="measures (see `minsharp measures`)")
    grid.add_argument("--epochs", type=int, metavar="N", help="training epochs (all models)")
    if batch_size:
        grid.add_argument("--batch-size", type=int, metavar="B", help="minibatch size (all models)")
    grid.add_argument("--lr", type=float, metavar="LR", help="initial learning rate (all models)")
    grid.add_argument(
        "--target-accuracy",
        type=_target,
        metavar="A|none",
        help="stop training at this train accuracy (all models); none: all epochs",
    )
    grid.add_argument("--dataset", help="digits, mnist, fashion-mnist or cifar10")
    grid.add_argument("--train-size", type=int, metavar="N", help="training examples")
    grid.add_argument("--test-size", type=int, metavar="N", help="test examples")
    grid.add_argument(
        "--measure-examples", type=int, metavar="N", help="measure on the first N train inputs"
    )
    grid.add_argument("--dtype", choices=DTYPES, help="float32 or float64")


def _add_running_arguments(
    parser: argparse.ArgumentParser,
    *,
    directory: str,
    threads: int | None,
    resamples: bool,
) -> None:
    """How a study runs: directory, data, resume, progress, threads, device, report.

    ``resamples``: offer ``--resamples`` (the randomized-label report's bootstrap).
    """
    run = parser.add_argument_group("running")
    run.add_argument("--output", metavar="DIR", help=f"study directory (./{directory})")
    run.add_argument("--data-dir", metavar="DIR", help="folder of the data files (default: cache)")
    run.add_argument("--download", action="store_true", help="download missing data files")
    run.add_argument(
        "--force", action="store_true", help="overwrite a study made with other settings"
    )
    run.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars over runs and epochs (default: when stderr is a terminal)",
    )
    run.add_argument(
        "--threads",
        type=int,
        default=threads,
        metavar="N",
        help=f"CPU threads ({threads or 'torch' + chr(39) + 's default'})",
    )
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (auto)")
    if resamples:
        run.add_argument(
            "--resamples", type=int, default=RESAMPLES, help=f"bootstrap resamples ({RESAMPLES})"
        )
    run.add_argument("--no-report", action="store_true", help="do not write the report")
    _add_launcher_arguments(parser)


def _add_launcher_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the runs execute: ``--launcher`` and the job options of a cluster."""
    jobs = parser.add_argument_group(
        "cluster jobs (--launcher slurm: one job per run through submitit, "
        "pip install 'minsharp[cluster]')"
    )
    jobs.add_argument(
        "--launcher",
        choices=launchers.LAUNCHERS,
        default="local",
        help="local: the runs here, one after the other (default); slurm: one Slurm job per "
        "run, waited for before the report; submitit-local: the same jobs as local processes",
    )
    jobs.add_argument("--partition", metavar="NAME", help="Slurm partition of the jobs")
    jobs.add_argument(
        "--time",
        type=int,
        metavar="MIN",
        help=f"time limit of each job in minutes ({launchers.DEFAULT_TIME_MIN})",
    )
    jobs.add_argument("--mem", type=int, metavar="GB", help="memory of each job in GB")
    jobs.add_argument("--cpus", type=int, metavar="N", help="CPU cores of each job")
    jobs.add_argument("--gpus", type=int, metavar="N", help="GPUs of each job")
    jobs.add_argument(
        "--launcher-option",
        action="append",
        metavar="KEY=VALUE",
        help="any submitit job parameter, e.g. slurm_account=proj or slurm_qos=high (repeat)",
    )


def _target(text: str) -> float | str:
    if text.strip().lower() == "none":
        return "none"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or none, got {text!r}") from None


def add_study_parsers(commands: Any) -> None:
    """Add ``study``, ``report`` and ``demo`` to the ``minsharp`` subcommands."""
    demo = commands.add_parser(
        "demo",
        help="the randomized-label study on the bundled digits (about a minute)",
        description="The randomized-label study's demo preset: scikit-learn's digits, "
        "ratios 0, 0.25, 0.5, 0.75, 1 x 3 seeds, an MLP 64-128-128-10, Minimum Sharpness, "
        "normalized sharpness, Hessian trace and epsilon-sharpness. Writes the study and its "
        f"report to ./{DEMO_DIRECTORY} (resumed if run again) and prints the correlations.",
    )
    _add_study_arguments(demo, kind=RANDOMIZED_LABELS.name, directory=DEMO_DIRECTORY, threads=1)
    demo.set_defaults(run=demo_command)

    study = commands.add_parser("study", help=f"run a study ({', '.join(kinds.KINDS)})")
    kinds_parser = study.add_subparsers(dest="study", required=True)
    for kind, entry in kinds.KINDS.items():
        parser = kinds_parser.add_parser(
            kind,
            help=entry.study.help,
            description=entry.study.description,
            epilog=entry.study.epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.add_argument("--preset", choices=entry.presets, default="demo", help="(demo)")
        parser.add_argument("--config", metavar="FILE", help="JSON study config")
        directory = entry.study.default_directory("<preset>")
        _add_study_arguments(parser, kind=kind, directory=directory, threads=None)
        parser.set_defaults(run=study_command)

    report = commands.add_parser(
        "report",
        help="write a study's report (markdown, figures, CSV)",
        description="Write DIR/report.md, DIR/figures/*.png and DIR/runs.csv from the finished "
        "runs of the study in DIR, for the kind its study.json records (randomized-labels, "
        "batch-size, bn-sharpness), and print its summary.",
    )
    report.add_argument("directory", metavar="DIR", help="the study directory")
    report.add_argument(
        "--resamples",
        type=int,
        default=RESAMPLES,
        help=f"bootstrap resamples of a randomized-label report ({RESAMPLES})",
    )
    report.set_defaults(run=report_command)

"""Where a study's runs execute: in this process (``local``), or one cluster job per run.

``minsharp study … --launcher local`` (the default) trains the runs one after the other in
the process that plans them, as :func:`~minsharp.study.core.runner.run_study` always did.
``--launcher slurm`` submits one Slurm job per run still to do through submitit
(``pip install 'minsharp[cluster]'``), waits for all of them, and leaves the report to the
caller as before; ``--launcher submitit-local`` runs the same jobs as local subprocesses with
submitit's local executor, to try a cluster setup on one machine.

A job only executes its run into the study directory, the run store, which stays the source
of truth: the job claims the run (:mod:`~minsharp.study.core.claims`), skips it if a finished
result with the same fingerprint is there already, and otherwise writes its ``result.json``
as a local worker would. Whatever a job reports back, the runner reads the outcome of every
run from the store once the jobs have ended, so a job that was killed, timed out or could
not start leaves its run to the next resume, with the job's error as the reason.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from minsharp.errors import StudyError

#: The launchers of ``--launcher``: ``local`` (this process) and the submitit clusters.
LAUNCHERS: tuple[str, ...] = ("local", "slurm", "submitit-local")

#: The submitit cluster of each launcher that submits jobs.
CLUSTERS: dict[str, str] = {"slurm": "slurm", "submitit-local": "local"}

#: Where the jobs' submission files, pickles and logs go, inside the study directory.
JOBS_DIR = "jobs"

#: A job's time limit in minutes unless ``--time`` says otherwise (submitit's own default,
#: a few minutes, would end most trainings).
DEFAULT_TIME_MIN = 60

R = TypeVar("R")

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass(frozen=True)
class JobFailure:
    """What came back from a job that raised, was killed, timed out or could not start."""

    job_id: str
    message: str


@dataclass
class SubmititLauncher:
    """One job per run through a submitit executor (``AutoExecutor``) of ``cluster``.

    Attributes:
        cluster: submitit's cluster name, ``"slurm"`` or ``"local"`` (submitit's local
            executor: one subprocess per job).
        parameters: the executor's parameters (``AutoExecutor.update_parameters``): its
            generic ones (``timeout_min``, ``mem_gb``, ``cpus_per_task``, ``gpus_per_node``…)
            and the cluster's own, prefixed (``slurm_partition``, ``slurm_account``…).
        device: the device each job computes on, resolved in the job (``"auto"``: CUDA
            where the job's node has it, else the CPU).
        threads: CPU threads of each job (``None``: torch's default on the node).
    """

    cluster: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    device: str = "auto"
    threads: int | None = None

    def run(self, folder: Path, jobs: Sequence[Callable[[], R]], *, name: str) -> list[Any]:
        """Submit ``jobs`` (picklable callables) as one job array and wait for all of them.

        Returns:
            What each job returned, in order, or a :class:`JobFailure` for a job that did
            not return.

        Raises:
            StudyError: submitit is not installed, its parameters are invalid, or the jobs
                cannot be submitted (no ``sbatch`` on this machine…).
        """
        executor = self.executor(folder, name=name)
        try:
            with executor.batch():
                submitted = [executor.submit(job) for job in jobs]
        except Exception as error:  # submitit's or the scheduler's refusal, in its words
            raise StudyError(
                f"--launcher {self.launcher_name}: cannot submit the {len(jobs)} jobs: "
                f"{type(error).__name__}: {error}"
            ) from error
        results: list[Any] = []
        for job in submitted:
            try:
                results.append(job.result())
            except Exception as error:  # the job died: its run is left to the next resume
                message = str(error).strip().splitlines()
                results.append(JobFailure(str(job.job_id), message[-1] if message else repr(error)))
        return results

    @property
    def launcher_name(self) -> str:
        """The ``--launcher`` value of this cluster."""
        return next(name for name, cluster in CLUSTERS.items() if cluster == self.cluster)

    def executor(self, folder: Path, *, name: str) -> Any:
        """The configured ``submitit.AutoExecutor`` writing its files under ``folder``.

        Raises:
            StudyError: submitit is not installed, the cluster is not reachable from here
                (no ``srun`` for Slurm), or a parameter is unknown or mistyped.
        """
        submitit = _submitit(self.launcher_name)
        try:
            executor = submitit.AutoExecutor(folder=folder / "%j", cluster=self.cluster)
        except RuntimeError as error:  # e.g. no srun here: not a Slurm machine
            raise StudyError(f"--launcher {self.launcher_name}: {error}") from None
        parameters = {"timeout_min": DEFAULT_TIME_MIN, "name": name, **self.parameters}
        try:
            executor.update_parameters(**parameters)
        except (NameError, AssertionError, TypeError, ValueError) as error:
            raise StudyError(
                f"--launcher {self.launcher_name}: invalid job parameters {dict(self.parameters)}: "
                f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
            ) from None
        return executor


def make_launcher(
    name: str,
    *,
    options: Mapping[str, Any] | None = None,
    device: str = "auto",
    threads: int | None = None,
) -> SubmititLauncher | None:
    """The launcher ``--launcher name`` asks for: ``None`` for ``local``, else submitit's.

    ``options`` are the executor's parameters (:attr:`SubmititLauncher.parameters`); for
    ``local`` there must be none. ``device`` and ``threads`` are each job's (``device`` is
    resolved in the job, where ``auto`` and ``cuda`` mean the node's GPUs).

    Raises:
        StudyError: an unknown launcher or device, options given to ``local``, or submitit
            missing.
    """
    options = dict(options or {})
    if name not in LAUNCHERS:
        raise StudyError(f"--launcher must be one of {', '.join(LAUNCHERS)}; got {name!r}.")
    if name == "local":
        if options:
            raise StudyError(
                f"--launcher local runs here and takes no job options; got {sorted(options)}. "
                "Use --launcher slurm (or submitit-local) for jobs."
            )
        return None
    if not _DEVICE.fullmatch(device):
        raise StudyError(f"--device must be auto, cpu, cuda or cuda:N; got {device!r}.")
    _submitit(name)  # refuse before any data are loaded
    return SubmititLauncher(CLUSTERS[name], options, device=device, threads=threads)


def _submitit(launcher: str) -> Any:
    """The submitit module.

    Raises:
        StudyError: it is not installed, naming the extra that installs it.
    """
    try:
        return importlib.import_module("submitit")
    except ImportError:
        raise StudyError(
            f"--launcher {launcher} needs submitit, which is not installed: pip install "
            "'minsharp[cluster]' (or pip install submitit), or use --launcher local."
        ) from None

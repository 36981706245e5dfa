"""Where the runs of the grid and the sweep execute: in this process, in worker processes, or as submitit jobs.

``local`` trains the runs one after another in the calling process, on its model.
``processes`` spreads the runs without a record over a few worker processes of this machine
(:class:`ProcessExecutor`): on a CPU a model this small keeps more cores busy as several
one-thread processes than as one process with many threads. ``submitit`` makes each run
without a record one job of the `submitit` package: a SLURM job on a cluster (one job array),
or a local subprocess on a machine without SLURM.

A worker or a job loads its own model from a :class:`ModelSpec` (a live model is never pickled;
a worker loads it once for all its runs), trains, measures, and writes its record into the
shared results folder, atomically (:func:`helpers.cache.write_atomic`), so that two jobs can
never leave a half-written record. The caller shows a progress bar over the finished jobs,
gathers their records, and reports every failed job with its error once the others are done;
calling again submits only the runs that still have no record.

Jobs import ``helpers`` like any script: from the installed package, or from the folders on
``PYTHONPATH`` when they were submitted (SLURM copies the submitting environment by default).
"""

from __future__ import annotations

import functools
import itertools
import json
import multiprocessing
import os
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch
from tqdm.auto import tqdm

from helpers.cache import results_dir
from helpers.finetune import TrainingConfig
from helpers.localization import Localization
from helpers.models import LoadedModel, load_model
from helpers.records import Measurements, record_path, run_configuration, run_experiment, run_key
from helpers.tasks import EditTask

if TYPE_CHECKING:
    import submitit

EXECUTORS = ("local", "processes", "submitit")
SUBMITIT_CLUSTERS = (None, "slurm", "local", "debug")


@dataclass(frozen=True)
class PlannedRun:
    """One cell of the grid: a task (built with ``task_seed``), a localization, its config, a training seed."""

    task: EditTask
    task_seed: int
    localization: Localization
    config: TrainingConfig
    seed: int

    def label(self) -> str:
        return f"{self.task.name} / {self.localization.name} / seed {self.seed}"


@dataclass(frozen=True)
class ModelSpec:
    """What a job needs to load its own copy of the model: a name or folder :func:`load_model` accepts."""

    name: str
    device: str = "cpu"
    dtype: str = "float32"

    def load(self) -> LoadedModel:
        return load_model(self.name, device=self.device, dtype=self.dtype)


@functools.cache
def _model_of(spec: ModelSpec) -> LoadedModel:
    """``spec``'s model, loaded once per process: a worker runs many runs on it (each leaves its weights as they were)."""
    return spec.load()


class Executor(Protocol):
    def run(
        self, model: LoadedModel, runs: Sequence[PlannedRun], general_chunks: torch.Tensor, measurements: Measurements,
        *, purpose: str = "evaluation", desc: str = "grid", progress: bool = True,
    ) -> list[dict]:
        """The record of every run, in the order of ``runs`` (trained where there is none yet)."""


class LocalExecutor:
    """Every run in this process, one after another, on the caller's model."""

    def run(
        self, model: LoadedModel, runs: Sequence[PlannedRun], general_chunks: torch.Tensor, measurements: Measurements,
        *, purpose: str = "evaluation", desc: str = "grid", progress: bool = True,
    ) -> list[dict]:
        records = []
        bar = tqdm(runs, desc=desc, disable=not progress, unit="run")
        for run in bar:
            bar.set_postfix_str(run.label())
            records.append(_experiment(model, run, general_chunks, measurements, purpose))
        return records


def _experiment(model: LoadedModel, run: PlannedRun, general_chunks: torch.Tensor, measurements: Measurements, purpose: str) -> dict:
    return run_experiment(
        model, run.task, run.localization, general_chunks, run.config,
        seed=run.seed, task_seed=run.task_seed, measurements=measurements, purpose=purpose,
    )


def planned_key(model: LoadedModel, run: PlannedRun, measurements: Measurements, purpose: str) -> str:
    """The key of the record ``run`` writes (see :func:`helpers.records.run_configuration`)."""
    return run_key(run_configuration(
        model, run.task, run.localization, run.config,
        seed=run.seed, task_seed=run.task_seed, measurements=measurements, purpose=purpose,
    ))


def run_job(
    spec: ModelSpec, run: PlannedRun, general_chunks: torch.Tensor, measurements: Measurements, purpose: str,
    key: str, threads: int | None,
) -> dict:
    """The body of one submitit job: load the model, check the run's key, then train, measure and record."""
    if threads:
        torch.set_num_threads(threads)
    model = _model_of(spec)
    found = planned_key(model, run, measurements, purpose)
    if found != key:
        raise RuntimeError(f"{run.label()}: the job would write record {found}, not the planned {key}")
    return _experiment(model, run, general_chunks, measurements, purpose)


class JobsFailed(RuntimeError):
    """Some jobs raised; ``failures`` maps each failed run's label to its job's error."""

    def __init__(self, failures: dict[str, str], n_jobs: int) -> None:
        self.failures = failures
        lines = [f"- {label}: {_tail(error)}" for label, error in failures.items()]
        super().__init__(
            f"{len(failures)} of {n_jobs} jobs failed; the others wrote their records, and running again "
            f"resubmits only the runs without one:\n" + "\n".join(lines)
        )


def _tail(error: str, n_lines: int = 6) -> str:
    return "\n    ".join(error.strip().splitlines()[-n_lines:])


def wait_for_jobs(labels: dict, finished: Iterable, *, desc: str, progress: bool) -> None:
    """Wait for every job (a submitit job or a future, keys of ``labels``) as ``finished`` yields it, with a
    progress bar; then raise :class:`JobsFailed` naming each failed job's run, if any failed."""
    failures = {}
    with tqdm(total=len(labels), desc=desc, disable=not progress, unit="job") as bar:
        for job in finished:
            try:
                job.result()
            except Exception as error:  # noqa: BLE001 -- a job's error, whatever it is, is reported with the others
                failures[labels[job]] = f"(job {job.job_id}) {error}" if hasattr(job, "job_id") else str(error)
            bar.update()
    if failures:
        raise JobsFailed(failures, len(labels))


class _JobExecutor:
    """Runs without a record become jobs that load their own model; the records are read back from the results folder."""

    model: ModelSpec

    def run(
        self, model: LoadedModel, runs: Sequence[PlannedRun], general_chunks: torch.Tensor, measurements: Measurements,
        *, purpose: str = "evaluation", desc: str = "grid", progress: bool = True,
    ) -> list[dict]:
        if model.name != self.model.name:
            raise ValueError(f"The jobs would load {self.model.name!r} but the runs are planned for {model.name!r}")
        keys = [planned_key(model, run, measurements, purpose) for run in runs]
        missing = [(run, key) for run, key in zip(runs, keys) if not record_path(key).exists()]
        if missing:
            self._submit_and_wait(missing, general_chunks.cpu(), measurements, purpose, desc, progress)
        return [json.loads(record_path(key).read_text()) for key in keys]

    def _submit_and_wait(
        self, missing: list[tuple[PlannedRun, str]], general_chunks: torch.Tensor, measurements: Measurements,
        purpose: str, desc: str, progress: bool,
    ) -> None:
        """Run one job per missing run, wait for all, and raise :class:`JobsFailed` if any failed."""
        raise NotImplementedError


_WORKER_MEASUREMENTS: dict[str, Measurements] = {}


def worker_job(
    token: str, spec: ModelSpec, run: PlannedRun, general_chunks: torch.Tensor, measurements: Measurements, purpose: str,
    key: str, threads: int | None,
) -> dict:
    """:func:`run_job` in a worker process, on the first copy of ``measurements`` this worker received under
    ``token``: what it prepared for one run (the unedited model's hidden states of a task) serves the next. Only
    the latest call's copy is kept."""
    if token not in _WORKER_MEASUREMENTS:
        _WORKER_MEASUREMENTS.clear()
    measurements = _WORKER_MEASUREMENTS.setdefault(token, measurements)
    return run_job(spec, run, general_chunks, measurements, purpose, key, threads)


def interleaved(missing: list[tuple[PlannedRun, str]]) -> list[tuple[PlannedRun, str]]:
    """The runs round-robin over their tasks (name and seed), in order within each: workers that start together
    start different tasks, so no two of them measure the same unedited model at once."""
    groups: dict[tuple[str, int], list] = {}
    for run, key in missing:
        groups.setdefault((run.task.name, run.task_seed), []).append((run, key))
    return [item for batch in itertools.zip_longest(*groups.values()) for item in batch if item is not None]


GIB_PER_WORKER = 4  # a worker's peak memory with the embedded model in float32 was about 3 GiB


def available_cores() -> int:
    """The CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers(threads: int = 1, gib_per_worker: float = GIB_PER_WORKER) -> int:
    """As many ``threads``-thread workers as there are cores for, within half of the machine's memory."""
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return max(1, min(available_cores() // threads, int(memory_gib / 2 // gib_per_worker)))


@dataclass
class ProcessExecutor(_JobExecutor):
    """The runs without a record spread over ``workers`` processes of this machine, ``threads`` torch threads each.

    Each worker loads the model once and trains its runs one after another; the pool lives as long as this object,
    so the sweep and the grid share it. The runs are handed out round-robin over their tasks (:func:`interleaved`).
    ``workers=None``: :func:`default_workers` one-thread workers; ``threads=None``: the cores shared among the
    workers. ``scripts/benchmark_executors.py`` compares this with one process using every core.

    A thread count changes the order of float sums, so a run's numbers can differ from the local executor's by
    rounding, and by more where a measurement amplifies rounding: the soft-prompt attack does (at the cpu profile's
    settings, a change of 1e-6 in its random start moved its P(true) on the half it trains on by 0.2).
    """

    model: ModelSpec
    workers: int | None = None
    threads: int | None = None
    _pool: ProcessPoolExecutor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if any(value is not None and value < 1 for value in (self.workers, self.threads)):
            raise ValueError(f"workers and threads must be None or at least 1, got {self.workers}, {self.threads}")
        if self.workers is None:
            self.workers = default_workers(self.threads or 1)
        if self.threads is None:
            self.threads = max(1, available_cores() // self.workers)

    def _submit_and_wait(
        self, missing: list[tuple[PlannedRun, str]], general_chunks: torch.Tensor, measurements: Measurements,
        purpose: str, desc: str, progress: bool,
    ) -> None:
        if self._pool is None:  # spawned, not forked: a fork of a process whose torch threads already run can hang
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        token = uuid.uuid4().hex
        futures: dict[Future, str] = {
            self._pool.submit(worker_job, token, self.model, run, general_chunks, measurements, purpose, key, self.threads):
                run.label()
            for run, key in interleaved(missing)
        }
        wait_for_jobs(futures, as_completed(futures), desc=f"{desc} ({self.workers} worker processes)", progress=progress)

    def close(self) -> None:
        """Stop the worker processes (they also stop when this process exits)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


@dataclass(frozen=True)
class SubmititExecutor(_JobExecutor):
    """One submitit job per run without a record; SLURM where available (``cluster=None``), else local subprocesses.

    ``cpus_per_job`` is also the number of torch threads in each job (None: torch's default).
    """

    model: ModelSpec
    cluster: str | None = None
    partition: str | None = None
    gpus_per_job: int = 0
    cpus_per_job: int | None = None
    time_limit_minutes: int = 60
    array_parallelism: int = 16
    folder: Path | None = None  # submitit's job files and logs; default results/submitit
    poll_seconds: float = 5.0

    def __post_init__(self) -> None:
        if self.cluster not in SUBMITIT_CLUSTERS:
            raise ValueError(f"Unknown submitit cluster {self.cluster!r}; choose one of {SUBMITIT_CLUSTERS}")
        for name in ("time_limit_minutes", "array_parallelism"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.gpus_per_job < 0 or (self.cpus_per_job is not None and self.cpus_per_job < 1):
            raise ValueError(f"gpus_per_job must be >= 0 and cpus_per_job None or >= 1, got {self.gpus_per_job}, {self.cpus_per_job}")

    def executor(self) -> submitit.AutoExecutor:
        """A submitit executor with this object's settings (SLURM ones ignored by the local cluster)."""
        import submitit

        executor = submitit.AutoExecutor(folder=self.folder or results_dir("submitit") / "%j", cluster=self.cluster)
        options = {"timeout_min": self.time_limit_minutes, "gpus_per_node": self.gpus_per_job,
                   "slurm_array_parallelism": self.array_parallelism, "name": "mechunlearn"}
        if self.cpus_per_job:
            options["cpus_per_task"] = self.cpus_per_job
        if self.partition:
            options["slurm_partition"] = self.partition
        executor.update_parameters(**options)
        return executor

    def _submit_and_wait(
        self, missing: list[tuple[PlannedRun, str]], general_chunks: torch.Tensor, measurements: Measurements,
        purpose: str, desc: str, progress: bool,
    ) -> None:
        import submitit

        executor = self.executor()
        with executor.batch():
            jobs = [executor.submit(run_job, self.model, run, general_chunks, measurements, purpose, key, self.cpus_per_job)
                    for run, key in missing]
        labels = {job: run.label() for job, (run, _) in zip(jobs, missing)}
        finished = submitit.helpers.as_completed(jobs, poll_frequency=self.poll_seconds)
        wait_for_jobs(labels, finished, desc=f"{desc} (submitit jobs)", progress=progress)


def make_executor(
    name: str, *, model: ModelSpec | None = None, workers: int | None = None, threads: int | None = None, **submitit_settings,
) -> Executor:
    """``"local"``; ``"processes"`` with ``workers`` of ``threads`` threads; or ``"submitit"`` with the
    :class:`SubmititExecutor` settings. The jobs of the last two load ``model``."""
    if name not in EXECUTORS:
        raise ValueError(f"Unknown executor {name!r}; choose one of {EXECUTORS}")
    if name == "local":
        return LocalExecutor()
    if model is None:
        raise ValueError(f"The {name} executor needs the ModelSpec its jobs load")
    if name == "processes":
        return ProcessExecutor(model, workers, threads)
    return SubmititExecutor(model, **submitit_settings)

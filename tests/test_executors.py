"""Executors: worker processes and submitit jobs (real subprocesses) write the records the local executor writes,
report failures, resubmit nothing done."""

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import Gemma3ForCausalLM

from helpers.executors import (
    JobsFailed, LocalExecutor, ModelSpec, PlannedRun, ProcessExecutor, SubmititExecutor, available_cores, default_workers,
    interleaved, make_executor,
)
from helpers.finetune import TrainingConfig, retain_chunks
from helpers.grid import run_grid
from helpers.localization import Component, Localization
from helpers.prompts import SPORTS
from helpers.records import Measurements
from helpers.robustness import Robustness, RobustnessSettings
from helpers.tasks import sports_athlete_edit
from tests.conftest import tiny_gemma_config

REPOSITORY = Path(__file__).resolve().parents[1]
NAMES = [f"Player{i}" for i in range(16)]
ATHLETES = pd.DataFrame({"athlete": NAMES, "sport": [SPORTS[i % 3] for i in range(len(NAMES))]})
CONFIG = TrainingConfig(learning_rate=1e-3, steps=2, batch_size=4, retain_batch_size=1, retain_length=16,
                        retain_positions=4, precision="float32")
COMPARED = ("metrics_before", "metrics")


@pytest.fixture
def one_thread():
    """One torch thread here and in every job: the same arithmetic in both, and no oversubscribed cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield 1
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def saved_model(gemma_tokenizer, tmp_path_factory) -> ModelSpec:
    """The tiny random Gemma3 saved to a folder, so that every job can load it."""
    folder = tmp_path_factory.mktemp("tiny-gemma3")
    torch.manual_seed(0)
    Gemma3ForCausalLM(tiny_gemma_config(len(gemma_tokenizer))).save_pretrained(folder)
    gemma_tokenizer.save_pretrained(folder)
    return ModelSpec(str(folder))


def plan(model) -> tuple[list[PlannedRun], PlannedRun]:
    """Two runs that work, and one whose localization names a layer the model lacks."""
    task = sports_athlete_edit(ATHLETES, 4, seed=0, n_maintain=4)
    good = [PlannedRun(task, 0, Localization.build(f"mlp{layer}", model, [Component("mlp", layer)], "test"), CONFIG, layer)
            for layer in (0, 1)]
    broken = Localization("mlp5", model.name, [Component("mlp", 5)], "test", n_parameters=1)
    return good, PlannedRun(task, 0, broken, CONFIG, 0)


def job_executor(kind: str, spec: ModelSpec, threads: int) -> ProcessExecutor | SubmititExecutor:
    if kind == "processes":
        return ProcessExecutor(spec, workers=2, threads=threads)
    return SubmititExecutor(spec, cluster="local", cpus_per_job=threads, poll_seconds=0.2)


@pytest.mark.parametrize("kind", ["processes", "submitit"])
def test_jobs_match_the_local_executor_report_failures_and_resubmit_only_missing_runs(kind, saved_model, one_thread, tmp_path, monkeypatch):
    model = saved_model.load()
    good, broken = plan(model)
    chunks = retain_chunks(model, ["The river flows slowly through the green valley. " * 20], 16)
    monkeypatch.setenv("MECHUNLEARN_RESULTS", str(tmp_path / "local"))
    local = run_grid(model, good, chunks, Measurements(), progress=False)

    monkeypatch.setenv("MECHUNLEARN_RESULTS", str(tmp_path / kind))
    monkeypatch.setenv("PYTHONPATH", str(REPOSITORY))  # the jobs import this working tree's helpers
    executor = job_executor(kind, saved_model, one_thread)
    with pytest.raises(JobsFailed, match="1 of 3 jobs failed") as failed:
        run_grid(model, good + [broken], chunks, Measurements(), executor=executor, progress=False)
    assert list(failed.value.failures) == [broken.label()]
    assert "the model has 2 layers" in failed.value.failures[broken.label()]
    if kind == "processes":  # the workers outlive a failed run, and stay for the next call
        pool = executor._pool
        assert pool is not None and run_grid(model, good, chunks, Measurements(), executor=executor, progress=False).shape[0] == 2
        assert executor._pool is pool
        executor.close()

    submitted = []
    monkeypatch.setattr(type(executor), "_submit_and_wait", lambda self, missing, *args: submitted.append(missing))
    jobs = run_grid(model, good, chunks, Measurements(), executor=executor, progress=False)
    with pytest.raises(FileNotFoundError):  # the broken run is resubmitted (here: not), and has no record
        run_grid(model, good + [broken], chunks, Measurements(), executor=executor, progress=False)
    assert [[run.label() for run, _ in missing] for missing in submitted] == [[broken.label()]]

    assert jobs.key.tolist() == local.key.tolist()
    for column in [c for c in local.columns if c.startswith(COMPARED)]:
        np.testing.assert_allclose(jobs[column], local[column], atol=1e-5, err_msg=column)
    np.testing.assert_allclose(np.stack(jobs["curves.total"]), np.stack(local["curves.total"]), atol=1e-5)


def test_executors_are_named_and_checked(tiny_model, saved_model, tmp_path, monkeypatch):
    monkeypatch.setenv("MECHUNLEARN_RESULTS", str(tmp_path))
    assert isinstance(make_executor("local"), LocalExecutor)
    assert make_executor("submitit", model=saved_model, partition="gpu", gpus_per_job=1).executor() is not None
    processes = make_executor("processes", model=saved_model, workers=3)
    assert (processes.workers, processes.threads) == (3, max(1, available_cores() // 3))
    assert 1 <= default_workers() <= available_cores() and default_workers(gib_per_worker=1e9) == 1
    with pytest.raises(ValueError, match="workers and threads must be None or at least 1"):
        ProcessExecutor(saved_model, workers=0)
    with pytest.raises(ValueError, match="Unknown executor 'slurm'"):
        make_executor("slurm")
    for name in ("submitit", "processes"):
        with pytest.raises(ValueError, match=f"The {name} executor needs the ModelSpec"):
            make_executor(name)
    with pytest.raises(ValueError, match="Unknown submitit cluster"):
        SubmititExecutor(saved_model, cluster="kubernetes")
    with pytest.raises(ValueError, match="array_parallelism"):
        SubmititExecutor(saved_model, array_parallelism=0)
    with pytest.raises(ValueError, match="would load"):
        SubmititExecutor(saved_model).run(tiny_model, [], torch.zeros(1, 2), Measurements())


def test_robustness_measurements_travel_to_a_job_with_their_key(tiny_model):
    chunks = retain_chunks(tiny_model, ["The river flows slowly through the green valley. " * 20], 16)
    measurements = Robustness(tiny_model, ATHLETES, pd.DataFrame(), chunks, RobustnessSettings(soft_prompt=None)).measurements()
    assert pickle.loads(pickle.dumps(measurements)).key() == measurements.key()


def test_worker_processes_get_the_runs_round_robin_over_tasks(tiny_model):
    localizations = [Localization.build(f"mlp{layer}", tiny_model, [Component("mlp", layer)], "test") for layer in (0, 1)]
    runs = [(PlannedRun(sports_athlete_edit(ATHLETES, 4, seed=seed, n_maintain=4), seed, loc, CONFIG, seed), f"{seed}{loc.name}")
            for seed in (0, 1, 2) for loc in localizations]
    assert [key for _, key in interleaved(runs)] == ["0mlp0", "1mlp0", "2mlp0", "0mlp1", "1mlp1", "2mlp1"]
    assert interleaved(runs[:2]) == runs[:2]  # one task: its order

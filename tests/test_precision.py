"""Which precision runs: ``auto`` from the hardware's flags, explicit values, the forcing variable, the records."""

import json

import pandas as pd
import pytest
import torch

import helpers.precision as precision
from helpers.finetune import TrainingConfig, retain_chunks
from helpers.localization import Component, Localization
from helpers.precision import FORCE_ENV, Precision, resolve_precision, resolved
from helpers.precision import cpu_flags as read_cpu_flags  # the real reader (the conftest stubs the module's)
from helpers.prompts import SPORTS
from helpers.records import run_experiment
from helpers.relearning import RelearnConfig
from helpers.robustness import RobustnessSettings
from helpers.tasks import sports_athlete_edit

NAMES = ["Alice", "Boris", "Chen", "Dmitri", "Elena", "Farid", "Greta", "Hiro"]
ATHLETES = pd.DataFrame({"athlete": NAMES, "sport": [SPORTS[i % 3] for i in range(len(NAMES))]})


def with_flags(monkeypatch, *flags: str) -> None:
    monkeypatch.setattr(precision, "cpu_flags", lambda *args: frozenset(flags))


def test_auto_is_float32_without_native_bf16_and_bf16_with_it(monkeypatch):
    with_flags(monkeypatch, "avx2", "fma", "avx512f")  # AVX-512 alone does not compute bf16
    assert resolve_precision("auto") == "float32"
    for flag in ("avx512_bf16", "amx_bf16", "bf16"):
        with_flags(monkeypatch, "avx2", flag)
        assert resolve_precision("auto") == resolve_precision("auto", "cpu") == "bfloat16"


def test_auto_on_cuda_asks_the_device_not_the_cpu(monkeypatch):
    with_flags(monkeypatch, "amx_bf16")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision("auto", "cuda") == "float32"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    with_flags(monkeypatch)
    assert resolve_precision("auto", torch.device("cuda", 0)) == "bfloat16"


def test_an_explicit_precision_is_obeyed_whatever_the_hardware(monkeypatch):
    with_flags(monkeypatch)
    assert resolve_precision("bfloat16") == "bfloat16"
    with_flags(monkeypatch, "amx_bf16")
    assert resolve_precision("float32") == "float32"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("float16")


def test_the_forcing_variable_wins_over_explicit_values_and_auto(monkeypatch):
    with_flags(monkeypatch, "amx_bf16")
    monkeypatch.setenv(FORCE_ENV, "float32")
    assert resolve_precision("bfloat16") == resolve_precision("auto") == "float32"
    with_flags(monkeypatch)
    monkeypatch.setenv(FORCE_ENV, "bfloat16")
    assert resolve_precision("float32") == resolve_precision("auto") == "bfloat16"
    monkeypatch.setenv(FORCE_ENV, "auto")  # "auto" forces nothing
    assert resolve_precision("bfloat16") == "bfloat16" and resolve_precision("auto") == "float32"
    monkeypatch.setenv(FORCE_ENV, "fp8")
    with pytest.raises(ValueError, match=f"{FORCE_ENV} must be one of"):
        resolve_precision("auto")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 amx_bf16 avx512_bf16\n\nprocessor\t: 1\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert read_cpu_flags(x86) >= {"avx2", "amx_bf16", "avx512_bf16"}
    assert "bf16" in read_cpu_flags(arm)
    assert read_cpu_flags(tmp_path / "missing") == frozenset()


def test_configs_resolve_every_precision_nested_ones_included(monkeypatch):
    with_flags(monkeypatch, "avx512_bf16")
    settings = resolved(RobustnessSettings(relearn=RelearnConfig(precision="auto"), eval_precision="auto"), "cpu")
    assert settings.eval_precision == "bfloat16" and settings.relearn.precision == "bfloat16"
    assert settings.soft_prompt.precision == "bfloat16"
    assert "auto" not in json.dumps(settings.to_dict())
    with pytest.raises(ValueError, match="precision=fp16"):
        TrainingConfig(precision="fp16")


def test_precision_context_resolves_auto_for_the_models_device(tiny_model, monkeypatch):
    with_flags(monkeypatch, "amx_bf16")
    assert Precision(tiny_model, "auto", trained=()).precision == "bfloat16"
    with_flags(monkeypatch)
    assert Precision(tiny_model, "auto", trained=()).precision == "float32"


def test_the_resolved_precision_reaches_the_record_and_its_key(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("MECHUNLEARN_RESULTS", str(tmp_path))
    task = sports_athlete_edit(ATHLETES, 4, seed=0, n_maintain=4)
    localization = Localization.build("mlp1", tiny_model, [Component("mlp", 1)], "test", settings={"precision": "float32"})
    chunks = retain_chunks(tiny_model, ["The river flows slowly through the green valley. " * 20], 16)
    config = TrainingConfig(learning_rate=1e-3, steps=1, batch_size=4, retain_batch_size=1, retain_length=16,
                            retain_positions=4, precision="auto")
    records = {}
    for flags in ((), ("amx_bf16",)):
        with_flags(monkeypatch, *flags)
        records[flags] = run_experiment(tiny_model, task, localization, chunks, config, seed=0, task_seed=0)
    without, with_native = records[()], records[("amx_bf16",)]
    assert without["training"]["precision"] == "float32" and with_native["training"]["precision"] == "bfloat16"
    assert without["key"] != with_native["key"]
    assert without["localization_settings"] == {"precision": "float32"}
    saved = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")]
    assert len(saved) == 2 and all("auto" not in json.dumps(r["training"]) for r in saved)

"""MMLU through lm-eval: the harness gets the loaded model and the limit, and its group accuracy comes back."""

import sys
import types

import pytest

from helpers.mmlu import mmlu_accuracy


@pytest.fixture()
def fake_lm_eval(monkeypatch):
    """A stand-in for lm-eval (not installed by default; the real one needs the hub for the questions)."""
    calls = {}
    package, models, huggingface = (types.ModuleType(n) for n in ("lm_eval", "lm_eval.models", "lm_eval.models.huggingface"))
    package.simple_evaluate = lambda **kw: calls.setdefault("evaluate", kw) and {"results": {"mmlu": {"acc,none": 0.41}}}
    huggingface.HFLM = lambda **kw: calls.setdefault("model", kw)
    for name, module in (("lm_eval", package), ("lm_eval.models", models), ("lm_eval.models.huggingface", huggingface)):
        monkeypatch.setitem(sys.modules, name, module)
    return calls


def test_mmlu_passes_the_loaded_model_and_reads_the_group_accuracy(tiny_model, fake_lm_eval):
    assert mmlu_accuracy(tiny_model, 20, seed=3) == 0.41
    assert fake_lm_eval["model"]["pretrained"] is tiny_model.hf_model
    evaluate = fake_lm_eval["evaluate"]
    assert evaluate["tasks"] == ["mmlu"] and evaluate["limit"] == 20 and evaluate["random_seed"] == 3


def test_mmlu_refuses_a_bad_limit_and_says_what_to_install(tiny_model, monkeypatch):
    with pytest.raises(ValueError, match="limit must be a positive"):
        mmlu_accuracy(tiny_model, 0)
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(ImportError, match="requirements-gpu.txt"):
        mmlu_accuracy(tiny_model, 5)


def test_robustness_settings_refuse_a_bad_mmlu_limit():
    from helpers.robustness import RobustnessSettings

    assert RobustnessSettings(mmlu_limit=20).mmlu_limit == 20
    with pytest.raises(ValueError, match="mmlu_limit must be None or a positive"):
        RobustnessSettings(mmlu_limit=0)

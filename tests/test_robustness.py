"""The grid's measurements (helpers.robustness): settings checks and the precision of the evaluation."""

import pandas as pd
import pytest
import torch

from helpers.counterfact import load_counterfact
from helpers.evaluation import general_chunks
from helpers.prompts import SPORTS
from helpers.robustness import Robustness, RobustnessSettings
from helpers.tasks import sports_athlete_edit

NAMES = ["Alice", "Boris", "Chen", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ingrid", "Jonas", "Kwame", "Lucia"]
ATHLETES = pd.DataFrame({"athlete": NAMES, "sport": [SPORTS[i % 3] for i in range(len(NAMES))]})
TEXT = ["The river flows slowly through the green valley, past old mills and quiet farms. " * 8]


def robustness(model, eval_precision: str) -> Robustness:
    settings = RobustnessSettings(quiz_size=4, max_general_tokens=64, eval_precision=eval_precision, soft_prompt=None)
    chunks = general_chunks(model, TEXT)
    return Robustness(model, ATHLETES, load_counterfact().head(40), chunks, settings)


def test_bf16_evaluation_agrees_with_float32_and_leaves_the_weights_alone(tiny_model):
    task = sports_athlete_edit(ATHLETES, 3, seed=0, n_maintain=3)
    weights = {n: p.detach().clone() for n, p in tiny_model.hf_model.named_parameters()}
    exact = robustness(tiny_model, "float32").evaluate(tiny_model, task)
    fast = robustness(tiny_model, "bfloat16").evaluate(tiny_model, task)
    assert set(fast) == set(exact)
    assert max(abs(fast[k] - exact[k]) for k in exact if k != "general_loss") < 0.02
    assert fast["general_loss"] == pytest.approx(exact["general_loss"], rel=0.01)
    assert fast != exact  # bf16 really ran: some value differs by rounding
    after = dict(tiny_model.hf_model.named_parameters())
    assert all(after[n].dtype == torch.float32 and torch.equal(after[n], w) for n, w in weights.items())


def test_settings_name_what_is_out_of_range():
    with pytest.raises(ValueError, match="eval_precision"):
        RobustnessSettings(eval_precision="float16")
    with pytest.raises(ValueError, match="Unknown relearning attacks"):
        RobustnessSettings(relearn_attacks=("lora", "sgd"))

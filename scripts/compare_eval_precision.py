"""How far bf16 evaluations (``eval_precision: bfloat16``) move the grid's metrics, and how much faster they are.

Runs :meth:`helpers.robustness.Robustness.evaluate` (every prompt format, the general loss and
the quiz) in float32 and in bf16 on the same model, first unedited, then after one edit of
``--facts`` athletes (MLPs ``--mlps`` trained for ``--steps`` steps of the book's loop), at
the ``cpu`` profile's evaluation settings; prints both values of every metric, their difference
and the seconds per evaluation. The bf16 speed is a gain only on a CPU with native bf16 (AVX512-BF16,
AMX); elsewhere bf16 is emulated and slower, which is why ``eval_precision: auto`` keeps float32
there. The output says what ``auto`` chooses on this machine; ``MECHUNLEARN_PRECISION`` is
ignored (the script compares the precisions on purpose).

    .venv/bin/python scripts/compare_eval_precision.py
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace

import pandas as pd
import torch

from helpers.counterfact import known_facts
from helpers.finetune import TrainingConfig, restored, retain_chunks, train_localized
from helpers.general_text import load_general_text
from helpers.localization import Component, Localization
from helpers.models import load_model
from helpers.precision import FORCE_ENV, describe_hardware
from helpers.robustness import Robustness, RobustnessSettings
from helpers.sports import known_athletes
from helpers.tasks import sports_athlete_edit


def timed_evaluations(model, task, robustness: dict[str, Robustness]) -> tuple[dict, dict]:
    """Every metric and the seconds of one evaluation, per precision."""
    metrics, seconds = {}, {}
    for precision, measure in robustness.items():
        start = time.perf_counter()
        metrics[precision] = measure.evaluate(model, task)
        seconds[precision] = time.perf_counter() - start
    return metrics, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--facts", type=int, default=16, help="athletes edited (and as many maintained)")
    parser.add_argument("--mlps", default="2,3,4,5,6", help="MLP layers the edit trains (comma-separated)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.pop(FORCE_ENV, None)  # both precisions are measured on purpose

    torch.manual_seed(args.seed)
    model = load_model(args.model)
    athletes, facts = known_athletes(model), known_facts(model)
    task = sports_athlete_edit(athletes, args.facts, seed=args.seed, n_maintain=args.facts)
    config = TrainingConfig(learning_rate=args.learning_rate, steps=args.steps, batch_size=8, retain_batch_size=1,
                            precision="auto")
    chunks = retain_chunks(model, load_general_text("train"), config.retain_length)
    cpu_profile = RobustnessSettings(quiz_size=32, max_general_tokens=512, n_orders=2, seed=args.seed)
    robustness = {p: Robustness(model, athletes, facts, chunks, replace(cpu_profile, eval_precision=p))
                  for p in ("float32", "bfloat16")}
    localization = Localization.build("edited", model, [Component("mlp", int(l)) for l in args.mlps.split(",")], "check")

    rows, speed = [], {}
    for state in ("unedited", "edited"):
        with restored(model, localization):
            if state == "edited":
                train_localized(model, localization, task, chunks, config, seed=args.seed, progress=False)
            metrics, speed[state] = timed_evaluations(model, task, robustness)
        rows += [{"model": state, "metric": k, "float32": v, "bfloat16": metrics["bfloat16"][k]}
                 for k, v in metrics["float32"].items()]
    table = pd.DataFrame(rows).assign(difference=lambda t: t.bfloat16 - t.float32)
    print(table.round(4).to_string(index=False))
    print(json.dumps({
        "max_abs_difference": table.groupby("model").difference.apply(lambda d: float(d.abs().max())).to_dict(),
        "seconds_per_evaluation": speed, "precision_auto": describe_hardware(model.device),
    }, indent=1))


if __name__ == "__main__":
    main()

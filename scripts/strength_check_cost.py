"""What one strength-curve check costs next to the completeness check it rides on.

At every completeness check of a run whose task is in ``strength_curve_tasks``, chapter 04 also
scores the trained facts on paraphrases and in both multiple-choice formats
(:meth:`helpers.robustness.Robustness.strength_point`). This script times each part on
Sports-Athlete-Edit at the cpu profile's scale (16 athletes, one option order), ``--repeats``
times, in the precision that ``MECHUNLEARN_PRECISION`` forces (float32 by default here):

    .venv/bin/python scripts/strength_check_cost.py
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("MECHUNLEARN_PRECISION", "float32")

import pandas as pd  # noqa: E402  (after the precision is forced)

from helpers.evaluation import format_metrics  # noqa: E402
from helpers.finetune import TrainingConfig, completeness_check  # noqa: E402
from helpers.models import load_model  # noqa: E402
from helpers.precision import describe_hardware  # noqa: E402
from helpers.robustness import STRENGTH_FORMATS  # noqa: E402
from helpers.sports import known_athletes  # noqa: E402
from helpers.tasks import sports_athlete_edit  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--facts", type=int, default=16, help="athletes edited (the cpu profile's n_facts)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.facts < 2 or args.repeats < 1:
        parser.error("--facts must be at least 2 and --repeats at least 1")
    print("precision:", describe_hardware())
    model = load_model(args.model)
    task = sports_athlete_edit(known_athletes(model), args.facts, seed=0, n_maintain=args.facts)
    rows = []
    for repeat in range(args.repeats):
        for part in ("completeness check", *STRENGTH_FORMATS):
            start = time.perf_counter()
            if part == "completeness check":
                completeness_check(model, task, TrainingConfig(), step=0)
            else:
                format_metrics(model, task, part, n_orders=1, seed=0, maintain=False)
            rows.append({"repeat": repeat, "part": part, "seconds": time.perf_counter() - start})
    seconds = pd.DataFrame(rows).groupby("part", sort=False).seconds.agg(["mean", "min", "max"])
    print(seconds.round(2).to_string())
    strength = seconds.loc[list(STRENGTH_FORMATS), "mean"].sum()
    print(f"one strength check: {strength:.1f} s, {strength / seconds.loc['completeness check', 'mean']:.1f}x "
          f"the completeness check it rides on")


if __name__ == "__main__":
    main()

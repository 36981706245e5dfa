"""Does the soft-prompt attack work where it trains? P(true) on its trained half, per steps and learning rate.

At the cpu profile's scale, on the embedded model, in float32 and seeded:

1. causal tracing of ``--trace-prompts`` known athletes (chapter 03's recipe) and its
   localization at a budget of five MLPs (the size of a fact-lookup set of MLPs 2-6);
2. a Sports-Athlete-Edit of ``--facts`` athletes, ``--edit-steps`` steps on that localization
   (a short output-tracing edit, as in chapter 04);
3. the soft-prompt attack (``helpers/soft_prompt.py``) for every ``--steps`` x ``--learning-rates``
   setting on the edited model: mean P(true) on the half it trains on and on the held-out half,
   with the plain prompt, the untrained random prefix and the trained prefix, and whether the
   attack was informative (``helpers.relearning.is_informative``: P(true) on the trained half up
   from the random start by at least ``INFORMATIVE_MARGIN``).

Prints one table (and JSON with ``--json``). The chosen setting goes into profiles/cpu.yaml.
About 8 CPU-minutes with ``--steps 6 20`` (measured before the random start was added to the
table, 2 cores under load, seed 0, 8 athletes, causal tracing's localization attn 3, 10, 11,
12, 15 and MLP 4, 6, 7; P(true), trained half / held-out half):

    learning rate  steps  plain prompt   trained prefix
    1e-3           6      .0002 / .0007  .32 / .27
    1e-3           20     .0002 / .0007  .50 / .25
    1e-2           6      .0002 / .0007  .77 / .17
    1e-2           20     .0002 / .0007  .98 / .16
    3e-2           6      .0002 / .0007  .28 / .41
    3e-2           20     .0002 / .0007  .31 / .26

    MECHUNLEARN_CACHE=/tmp/c MECHUNLEARN_RESULTS=/tmp/r nice -n 19 .venv/bin/python scripts/tune_soft_prompt.py --steps 6 20
"""

from __future__ import annotations

import argparse
import os
import time

os.environ["MECHUNLEARN_PRECISION"] = "float32"

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from helpers.contrast import contrast_batches  # noqa: E402
from helpers.finetune import TrainingConfig, restored, retain_chunks, train_localized  # noqa: E402
from helpers.general_text import load_general_text  # noqa: E402
from helpers.knowledge import candidate_sample  # noqa: E402
from helpers.localization import Component, budget_matched, parameter_count  # noqa: E402
from helpers.models import load_model  # noqa: E402
from helpers.prompts import SPORTS, sports_fact_prompt  # noqa: E402
from helpers.relearning import INFORMATIVE_MARGIN  # noqa: E402
from helpers.seed import seed_everything  # noqa: E402
from helpers.soft_prompt import SoftPromptConfig, soft_prompt_attack  # noqa: E402
from helpers.sports import known_athletes, load_sports  # noqa: E402
from helpers.tasks import sports_athlete_edit  # noqa: E402
from helpers.tracing import causal_trace  # noqa: E402


def traced_localization(model, known: pd.DataFrame, n_prompts: int, seed: int):
    """Causal tracing's localization (all components) from ``n_prompts`` known athletes, at five MLPs' budget."""
    athletes = known.sample(frac=1, random_state=seed).head(n_prompts)
    foils = [[other for other in SPORTS if other != sport] for sport in athletes.sport]
    batches = contrast_batches(model, [sports_fact_prompt(a) for a in athletes.athlete], athletes.athlete.tolist(),
                               athletes.sport.tolist(), foils, seed=seed, batch_size=16)
    trace = causal_trace(model, batches, seed=seed, precision="float32", progress=False)
    budget = parameter_count(model, [Component("mlp", layer) for layer in range(2, 7)])
    return budget_matched("causal_tracing", model, trace.component_scores(), budget, method="causal tracing")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--candidates", type=int, default=300, help="athletes scored for the known set")
    parser.add_argument("--trace-prompts", type=int, default=6)
    parser.add_argument("--facts", type=int, default=8, help="athletes edited (half trains the soft prompt)")
    parser.add_argument("--edit-steps", type=int, default=12)
    parser.add_argument("--edit-learning-rate", type=float, default=1e-4)
    parser.add_argument("--vectors", type=int, default=4)
    parser.add_argument("--steps", type=int, nargs="+", default=[6])
    parser.add_argument("--learning-rates", type=float, nargs="+", default=[1e-3, 1e-2, 3e-2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the table as JSON records too")
    args = parser.parse_args()

    seed_everything(args.seed)
    model = load_model(dtype="float32")
    known = known_athletes(model, candidate_sample(load_sports(), args.candidates))
    localization = traced_localization(model, known, args.trace_prompts, args.seed)
    print("causal tracing localization:", localization.ids)
    task = sports_athlete_edit(known, args.facts, seed=args.seed, n_maintain=args.facts)
    chunks = retain_chunks(model, load_general_text("train"), TrainingConfig().retain_length)
    edit = TrainingConfig(learning_rate=args.edit_learning_rate, steps=args.edit_steps, batch_size=args.facts,
                          retain_batch_size=1, precision="float32")
    rows = []
    with restored(model, localization):
        train_localized(model, localization, task, chunks, edit, seed=args.seed, progress=False)
        for learning_rate in args.learning_rates:
            for steps in args.steps:
                config = SoftPromptConfig(n_vectors=args.vectors, steps=steps, learning_rate=learning_rate,
                                          batch_size=8, precision="float32")
                start = time.perf_counter()
                result = soft_prompt_attack(model, task, config, seed=args.seed, progress=False)
                rows.append({"learning rate": learning_rate, "steps": steps, **result,
                             "seconds": time.perf_counter() - start})
                print(rows[-1], flush=True)
    table = pd.DataFrame(rows).rename(columns=lambda c: c.removeprefix("soft_prompt_"))
    table["train gain"] = table.train_p_true_after - table.train_p_true_before
    table["held-out gain"] = table.p_true_after - table.p_true_before
    print(f"\ninformative: train gain >= {INFORMATIVE_MARGIN}; {torch.get_num_threads()} threads")
    print(table.drop(columns=["error"]).round(3).to_string(index=False))
    if args.json:
        print(table.to_json(orient="records"))


if __name__ == "__main__":
    main()

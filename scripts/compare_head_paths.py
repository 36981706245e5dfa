"""Which extraction heads, receiver layer and fact-lookup MLPs each head-path variant picks.

Runs chapter 02's two path-patching steps (:func:`helpers.path_patching.select_fact_lookup`)
on ``--prompts`` known CounterFact facts, once with every later component frozen on a head's
direct path and once with the later MLPs recomputed (the authors' form), and prints both
selections side by side.

    .venv/bin/python scripts/compare_head_paths.py --prompts 24 --seeds 1
"""

from __future__ import annotations

import argparse

from helpers.contrast import contrast_batches
from helpers.counterfact import known_facts
from helpers.models import load_model
from helpers.path_patching import select_fact_lookup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--prompts", type=int, default=24, help="known CounterFact facts to patch")
    parser.add_argument("--seeds", type=int, default=1, help="random corruptions of the subjects")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--threshold", type=float, default=0.02)
    args = parser.parse_args()

    model = load_model(args.model)
    facts = known_facts(model, threshold=0.5)
    facts = facts.sample(n=min(args.prompts, len(facts)), random_state=args.seed).reset_index(drop=True)
    corruptions = [
        contrast_batches(model, facts.prompt.tolist(), facts.subject.tolist(), facts.target_true.tolist(),
                         [[t] for t in facts.target_new], seed=args.seed + i)
        for i in range(args.seeds)
    ]
    print(f"{len(facts)} known facts, {args.seeds} corruption seed(s), model {args.model}")
    selections = select_fact_lookup(model, corruptions, top_k_heads=args.top_k, mlp_threshold=args.threshold)
    for head_paths, selection in selections.items():
        heads = ", ".join(f"L{l}H{h} ({selection.head_means[l, h]:+.3f})" for l, h in selection.extraction_heads)
        print(f"\n{head_paths}:\n  extraction heads: {heads}\n  receiver layer: {selection.receiver_layer}"
              f"\n  fact-lookup MLPs: {selection.mlps}")


if __name__ == "__main__":
    main()

"""Benchmark, in float32 on one thread: the general loss (512 held-out tokens) from the full logits against
:func:`helpers.scoring.next_token_loss` (the vocabulary in blocks, a running log-sum-exp).

As in the grid, each call follows a short training run of a localization (the memory the full logits need is then
mapped and faulted in anew). Each path runs in its own fresh processes, alternating old and new, ``--repeats``
processes each; every process times ``--calls`` calls, each after 3 training steps. Prints the median seconds per
path, the ratio old / new and its 95% interval over the alternating pairs, and the largest difference of the loss.

    .venv/bin/python scripts/benchmark_general_loss.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def one_process(path: str, calls: int) -> dict:
    """Seconds of each call of one path, and the mean loss per token, in this process."""
    from helpers.evaluation import general_chunks
    from helpers.finetune import TrainingConfig, restored, retain_chunks, train_localized
    from helpers.general_text import load_general_text
    from helpers.localization import Component, Localization
    from helpers.models import load_model
    from helpers.scoring import final_hidden, next_token_loss, unembed
    from helpers.sports import known_athletes
    from helpers.tasks import sports_athlete_edit

    torch.set_num_threads(1)
    model = load_model()
    chunks = general_chunks(model, load_general_text("heldout"))[:4]  # the cpu profile's max_general_tokens: 512
    task = sports_athlete_edit(known_athletes(model), 16, seed=0, n_maintain=16)
    localization = Localization.build("mlps 2-5", model, [Component("mlp", i) for i in range(2, 6)], "benchmark")
    train_chunks = retain_chunks(model, load_general_text("train"), TrainingConfig().retain_length)
    config = TrainingConfig(steps=3, batch_size=16, retain_batch_size=1, precision="float32", check_every=0)
    seconds, loss = [], float("nan")
    for _ in range(calls):
        with restored(model, localization):
            train_localized(model, localization, task, train_chunks, config, seed=0, progress=False)
            start = time.perf_counter()
            with torch.inference_mode():
                hidden = final_hidden(model, input_ids=chunks)[:, :-1].flatten(0, 1)
                targets = chunks[:, 1:].flatten()
                if path == "old":
                    total = F.cross_entropy(unembed(model, hidden).float(), targets, reduction="sum")
                else:
                    total = next_token_loss(model, hidden, targets)
                loss = total.item() / len(targets)
            seconds.append(time.perf_counter() - start)
    return {"seconds": seconds, "loss": loss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per path, alternating")
    parser.add_argument("--calls", type=int, default=3, help="calls per process, each after a short training run")
    parser.add_argument("--child", choices=["old", "new"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_process(args.child, args.calls)))
        return
    if args.repeats < 1 or args.calls < 1:
        parser.error("--repeats and --calls must be at least 1")
    from helpers.stats import mean_ci

    env = os.environ | {"MECHUNLEARN_PRECISION": "float32"}
    runs: dict[str, list[dict]] = {"old": [], "new": []}
    for repeat in range(args.repeats):
        for path in ("old", "new") if repeat % 2 == 0 else ("new", "old"):
            out = subprocess.run([sys.executable, __file__, "--child", path, "--calls", str(args.calls)],
                                 env=env, capture_output=True, text=True, check=True)
            runs[path].append(json.loads(out.stdout.strip().splitlines()[-1]))
    medians = {path: [statistics.median(r["seconds"]) for r in rs] for path, rs in runs.items()}
    ratios = [old / new for old, new in zip(medians["old"], medians["new"])]
    report = {
        "threads": 1, "repeats": args.repeats, "calls per process": args.calls,
        "seconds per call": {path: [[round(s, 3) for s in r["seconds"]] for r in rs] for path, rs in runs.items()},
        "median seconds": {path: statistics.median(m) for path, m in medians.items()},
        "ratio old / new": statistics.mean(ratios), "ratio 95% CI": list(mean_ci(ratios)[1:]),
        "largest loss difference": max(abs(a["loss"] - b["loss"]) for a, b in zip(runs["old"], runs["new"])),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

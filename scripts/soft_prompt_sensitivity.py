"""How much does rounding move the soft-prompt attack? Its result after tiny changes of its start and thread count.

On the embedded model, in float32 and seeded: a Sports-Athlete-Edit of 16 athletes, trained
``--edit-steps`` steps on the fact-lookup MLPs 2-6, then the soft-prompt attack at the cpu
profile's settings (4 vectors, 6 steps, learning rate 1e-2), run again with

- noise of standard deviation ``--noise`` added to each coordinate of its random start (the
  vectors have norm 1, in units of the mean token-embedding norm), and
- one torch thread instead of the default (a different order of the same float sums).

Prints P(true) after the attack on the half it trains on and on the held-out half, per variant.
A stable attack would move by about the size of the change (1e-6); chapter 06 cites the numbers.

    .venv/bin/python scripts/soft_prompt_sensitivity.py
"""

from __future__ import annotations

import argparse
import json
import os
from unittest import mock

os.environ["MECHUNLEARN_PRECISION"] = "float32"

import torch  # noqa: E402

from helpers import soft_prompt  # noqa: E402
from helpers.finetune import TrainingConfig, restored, retain_chunks, train_localized  # noqa: E402
from helpers.general_text import load_general_text  # noqa: E402
from helpers.localization import Component, Localization  # noqa: E402
from helpers.models import load_model  # noqa: E402
from helpers.soft_prompt import SoftPromptConfig, soft_prompt_attack  # noqa: E402
from helpers.sports import known_athletes  # noqa: E402
from helpers.tasks import sports_athlete_edit  # noqa: E402

CONFIG = SoftPromptConfig(n_vectors=4, steps=6, batch_size=8, learning_rate=1e-2, precision="float32")  # profiles/cpu.yaml


def attack_with(model, task, noise: float, threads: int) -> dict[str, float]:
    """The attack's final P(true) with its random start moved by seeded noise of size ``noise``, on ``threads`` threads."""
    unperturbed = soft_prompt.initial_units

    def moved_start(*args, **kwargs) -> torch.Tensor:
        start = unperturbed(*args, **kwargs)
        return start + noise * torch.randn(start.shape, generator=torch.Generator().manual_seed(1))

    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with mock.patch.object(soft_prompt, "initial_units", moved_start):
            result = soft_prompt_attack(model, task, CONFIG, seed=0, progress=False)
    finally:
        torch.set_num_threads(default_threads)
    return {"trained half": round(result["soft_prompt_train_p_true_after"], 4),
            "held-out half": round(result["soft_prompt_p_true_after"], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edit-steps", type=int, default=8)
    parser.add_argument("--noise", type=float, nargs="+", default=[1e-6, 1e-4])
    args = parser.parse_args()
    model = load_model()
    task = sports_athlete_edit(known_athletes(model), 16, seed=0, n_maintain=16)
    chunks = retain_chunks(model, load_general_text("train"), TrainingConfig().retain_length)
    edit = TrainingConfig(learning_rate=2e-4, steps=args.edit_steps, batch_size=16, retain_batch_size=1,
                          precision="float32", check_every=0)
    localization = Localization.build("fact_lookup", model, [Component("mlp", layer) for layer in range(2, 7)], "MLPs 2-6")
    threads = torch.get_num_threads()
    variants = {f"as is ({threads} threads)": (0.0, threads), "as is (1 thread)": (0.0, 1)}
    variants |= {f"start moved by {noise:g}": (noise, threads) for noise in args.noise}
    with restored(model, localization):
        train_localized(model, localization, task, chunks, edit, seed=0, progress=False)
        report = {name: attack_with(model, task, noise, n) for name, (noise, n) in variants.items()}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

"""The CUDA path, proven, and the paper-scale cost, measured: one script for a short-lived GPU machine.

Runs with torch, transformers, numpy, pandas, peft and pyyaml (a GPU image has them; not
TransformerLens, papermill, plotly, Jupyter Book, scikit-learn or scipy, and no model files): the
models are randomly initialized and the tokenizer is a word-level one built here from the
project's data, so nothing is downloaded. ``helpers`` is imported from this working tree.

(a) **parity**: a tiny random Gemma3 edits athletes (Sports-Athlete-Edit), then goes through
    every evaluation of chapter 04 and both relearning attacks, once on the CPU in float32 and
    once on ``--device`` in bf16 weights (the gpu profile's ``dtype``); a table gives every
    metric both ways and their difference.
(b) **timing**: random models with the shapes of Gemma-7B and Gemma-2-9B (timing does not
    depend on the weights' values; ``--scale tiny`` shrinks them for a CPU) at the gpu profile's
    batch sizes: seconds per training step for a budget-sized localization (4 MLPs), ``all_mlps``
    and ``nonlocalized``, one training-format evaluation (what a sweep run measures), and one grid
    run's measurements (every format, the general loss, the quiz, both relearning attacks and the
    soft-prompt attack; not the latent probes, whose module imports plotly);
(c) a table of both, and the GPU-hours of the gpu profile's sweep and grid per model.

    python scripts/gpu_check.py --device cuda                  # on a GPU machine (minutes)
    python scripts/gpu_check.py --device cpu --scale tiny \\
        --facts 4 --steps 2 --relearn-steps 2 --soft-prompt-steps 2   # CI (seconds)
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # helpers from this working tree, not an installed copy

import pandas as pd  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers, processors  # noqa: E402
from transformers import AutoModelForCausalLM, Gemma2Config, Gemma3TextConfig, GemmaConfig, PreTrainedTokenizerFast  # noqa: E402

from helpers.counterfact import load_counterfact  # noqa: E402
from helpers.evaluation import evaluate_task, other_kind_quiz  # noqa: E402
from helpers.finetune import TrainingConfig, restored, retain_chunks, train_localized  # noqa: E402
from helpers.general_text import load_general_text  # noqa: E402
from helpers.localization import Component, Localization  # noqa: E402
from helpers.models import LoadedModel, resolve_dtype  # noqa: E402
from helpers.precision import Precision  # noqa: E402
from helpers.records import training_format_metrics  # noqa: E402
from helpers.relearning import RelearnConfig, relearn  # noqa: E402
from helpers.soft_prompt import SoftPromptConfig, soft_prompt_attack  # noqa: E402
from helpers.sports import load_sports  # noqa: E402
from helpers.tasks import sports_athlete_edit  # noqa: E402

NOTEBOOK = "04_localized_editing"
QUIZ_SIZE, MAX_GENERAL_TOKENS = 32, 1024  # chapter 04's defaults (the gpu profile keeps them)
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
# Published shapes (config.json of each model); vocabulary 256,000.
PAPER_SHAPES = {
    "gemma-7b": (GemmaConfig, dict(hidden_size=3072, intermediate_size=24576, num_hidden_layers=28,
                                   num_attention_heads=16, num_key_value_heads=16, head_dim=256)),
    "gemma-2-9b": (Gemma2Config, dict(hidden_size=3584, intermediate_size=14336, num_hidden_layers=42,
                                      num_attention_heads=16, num_key_value_heads=8, head_dim=256)),
}
TINY_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=32)


def gpu_profile() -> dict:
    """The gpu profile's values for chapter 04 (shared values, then the chapter's own)."""
    profile = yaml.safe_load((ROOT / "profiles" / "gpu.yaml").read_text())
    return {**{k: v for k, v in profile.items() if k != "notebooks"}, **profile["notebooks"][NOTEBOOK]}


def word_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``texts`` (BOS first, left padding): no files, no network."""
    words = sorted({w for text in texts for w in re.findall(r"\w+|[^\w\s]", text)})
    vocab = {token: i for i, token in enumerate(SPECIALS + words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", padding_side="left")


def data_tokenizer(athletes: pd.DataFrame, facts: pd.DataFrame) -> PreTrainedTokenizerFast:
    """Every word of the athletes, the facts, the general text, and the letters of the multiple-choice formats."""
    columns = [athletes[c].astype(str) for c in athletes.columns] + [facts[c].astype(str) for c in facts.columns]
    texts = [" ".join(c) for c in columns] + load_general_text("train") + load_general_text("heldout")
    return word_tokenizer(texts + [" ".join("ABCDEFGHIJKLMNOPQRSTUVWXYZ"), "Answer Question Options Fact"])


def random_model(config_class, shape: dict, tokenizer, name: str, device: str, dtype: str) -> LoadedModel:
    """A randomly initialized model of ``shape``, built directly on ``device`` in ``dtype``."""
    config = config_class(vocab_size=max(len(tokenizer), shape.get("vocab_size", 0)), pad_token_id=0, bos_token_id=1,
                          eos_token_id=2, **{k: v for k, v in shape.items() if k != "vocab_size"})
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=resolve_dtype(dtype), attn_implementation="eager")
    return LoadedModel(name, model.eval(), tokenizer, name)


class Measure:
    """What one grid run measures (chapter 04's ``Robustness`` without the latent probes, whose
    module imports plotly): every format, the general loss and the quiz; both relearning attacks
    and the soft-prompt attack, at the gpu profile's settings with this script's overrides."""

    def __init__(self, profile: dict, args: argparse.Namespace, data: dict, precision: str) -> None:
        self.profile, self.data, self.precision = profile, data, precision
        relearn_steps = args.relearn_steps or profile["relearn_steps"]
        self.relearn = RelearnConfig(
            steps=relearn_steps, eval_every=min(profile["relearn_eval_every"], relearn_steps),
            learning_rate=profile["relearn_learning_rate"], lora_rank=profile["lora_rank"],
            batch_size=profile["relearn_facts_per_step"], retain_batch_size=profile["retain_batch_size"], precision=precision)
        self.soft_prompt = SoftPromptConfig(
            n_vectors=profile["soft_prompt_vectors"], steps=args.soft_prompt_steps or profile["soft_prompt_steps"],
            batch_size=profile["relearn_facts_per_step"], precision=precision)

    def evaluate(self, model: LoadedModel, task) -> dict[str, float]:
        quiz = other_kind_quiz(task, athletes=self.data["athletes"], facts=self.data["facts"], n=QUIZ_SIZE)
        with Precision(model, self.precision, trained=()).active():
            return evaluate_task(model, task, quiz=quiz, general_chunks_or_texts=load_general_text("heldout"),
                                 n_orders=self.profile["n_orders"], batch_size=self.profile["batch_size"],
                                 max_general_tokens=MAX_GENERAL_TOKENS)

    def attack(self, model: LoadedModel, task, localization: Localization, chunks: torch.Tensor) -> dict[str, float]:
        errors = {
            f"relearn_error_{name}": float(relearn(model, task, localization, chunks, self.relearn, attack=name, seed=0,
                                                   progress=False).relearn_error.iloc[-1])
            for name in self.profile["relearn_attacks"]
        }
        return errors | soft_prompt_attack(model, task, self.soft_prompt, seed=0, progress=False)


def training_config(profile: dict, args: argparse.Namespace) -> TrainingConfig:
    """The gpu profile's training config for chapter 04 (its largest swept learning rate)."""
    return TrainingConfig(learning_rate=profile["sweep_learning_rates"][-1], steps=args.steps or profile["steps"],
                          batch_size=profile["facts_per_step"], retain_batch_size=profile["retain_batch_size"],
                          precision=profile["precision"])


def synchronized_seconds(fn: Callable[[], object]) -> tuple[object, float]:
    """``fn()`` and its wall time, with the GPU's queued work finished on both sides."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def one_run(model: LoadedModel, task, localization: Localization, chunks: torch.Tensor, config: TrainingConfig,
            measure: Measure) -> dict[str, float]:
    """Chapter 04's run without the record: evaluate, edit, evaluate and attack; every value."""
    before = measure.evaluate(model, task)
    with restored(model, localization):
        log = train_localized(model, localization, task, chunks, config, seed=0, progress=False)
        after = measure.evaluate(model, task)
        attacks = measure.attack(model, task, localization, chunks)
    scalars = {f"before.{k}": v for k, v in before.items()} | {f"after.{k}": v for k, v in after.items()}
    return scalars | {f"attack.{k}": v for k, v in attacks.items()} | {"training.final_loss": log.total[-1]}


def parity(args: argparse.Namespace, profile: dict, data: dict) -> pd.DataFrame:
    """(a) The same tiny edit and measurements on the CPU in float32 and on ``--device`` with bf16 matrix products.

    Both models hold float32 weights (the gpu profile loads float32 and trains float32 master weights);
    the second computes every matrix product in bf16, as ``precision: auto`` does on a GPU."""
    task = sports_athlete_edit(data["athletes"], args.facts or 8, seed=0, n_maintain=args.facts or 8)
    torch.manual_seed(0)
    reference = random_model(Gemma3TextConfig, TINY_SHAPE, data["tokenizer"], "tiny-gemma3", "cpu", "float32")
    results = {}
    for label, device, precision in (("cpu float32", "cpu", "float32"), (f"{args.device} bf16", args.device, "bfloat16")):
        config = replace(training_config(profile, args), learning_rate=1e-3, precision=precision)
        measure = Measure(profile, args, data, precision)
        model = replace(reference, hf_model=copy.deepcopy(reference.hf_model).to(device=device))
        localization = Localization.build("mlps", model, [Component("mlp", layer) for layer in (1, 2)], "gpu check")
        chunks = retain_chunks(model, load_general_text("train"), config.retain_length)
        results[label] = one_run(model, task, localization, chunks, config, measure)
    table = pd.DataFrame(results)
    table["difference"] = (table.iloc[:, 1] - table.iloc[:, 0]).abs()
    return table


def localizations(model: LoadedModel) -> dict[str, Localization]:
    """A budget-sized localization (4 MLPs, as fact lookup), all MLPs, and every MLP and attention layer."""
    n = model.n_layers
    budget = [Component("mlp", layer) for layer in range(1, min(5, n))]
    mlps = [Component("mlp", layer) for layer in range(n)]
    return {
        "4 mlps": Localization.build("4 mlps", model, budget, "gpu check"),
        "all_mlps": Localization.build("all_mlps", model, mlps, "gpu check"),
        "nonlocalized": Localization.build("nonlocalized", model, mlps + [Component("attn", layer) for layer in range(n)], "gpu check"),
    }


def timing(args: argparse.Namespace, profile: dict, data: dict, name: str) -> list[dict]:
    """(b) Seconds per training step per localization, per sweep-run evaluation, per grid run's measurements."""
    config_class, shape = PAPER_SHAPES[name]
    tiny = args.scale == "tiny"  # float32 then: a CPU's bf16 matrix products are slow, and (a) runs bf16 already
    shape = TINY_SHAPE if tiny else shape | {"vocab_size": 256_000}
    torch.manual_seed(0)
    model = random_model(config_class, shape, data["tokenizer"], name, args.device, "float32" if tiny else profile["dtype"])
    n_parameters = sum(p.numel() for p in model.hf_model.parameters())
    task = sports_athlete_edit(data["athletes"], args.facts or profile["n_facts"], seed=0, n_maintain=args.facts or profile["n_maintain"])
    config = replace(training_config(profile, args), steps=args.timing_steps)
    chunks = retain_chunks(model, load_general_text("train"), config.retain_length)
    located = localizations(model)
    with restored(model, located["4 mlps"]):  # warm-up, untimed: kernels, allocator, autotuning
        train_localized(model, located["4 mlps"], task, chunks, replace(config, steps=1), seed=0, progress=False)
    rows = []
    for label, localization in located.items():
        with restored(model, localization):
            log = train_localized(model, localization, task, chunks, config, seed=0, progress=False)
        rows.append({"what": f"training step, {label}", "seconds": (log.seconds - log.check_seconds) / log.steps})
    _, seconds = synchronized_seconds(lambda: training_format_metrics(model, task))
    rows.append({"what": "training-format evaluation", "seconds": seconds})
    measure = Measure(profile, args, data, profile["precision"])
    _, seconds = synchronized_seconds(
        lambda: (measure.evaluate(model, task), measure.attack(model, task, located["4 mlps"], chunks)))
    rows.append({"what": "grid run's measurements, 4 mlps", "seconds": seconds})
    return [{"model": name, "parameters (B)": n_parameters / 1e9} | row for row in rows]


def run_counts(profile: dict) -> dict[str, int]:
    """Runs of the gpu profile's sweep (validation tasks) and grid (evaluated tasks), per model."""
    n_localizations = 8
    datasets = {"sports" if t.startswith("sports") else "counterfact" for t in profile["tasks"]}
    seeds = sum(len(profile["athlete_seeds"] if t == "sports_athlete_edit" else profile["other_seeds"]) for t in profile["tasks"])
    per_config = len(profile["sweep_learning_rates"]) * len(profile["sweep_forget_weights"])
    return {"sweep": len(datasets) * n_localizations * per_config, "grid": seeds * n_localizations}


def gpu_hours(times: pd.DataFrame, profile: dict) -> pd.DataFrame:
    """The sweep's and the grid's GPU-hours per model from the measured seconds (6 budget-sized localizations, 2 large)."""
    counts, steps = run_counts(profile), profile["steps"]
    rows = []
    for name, group in times.groupby("model", sort=False):
        s = group.set_index("what").seconds
        train = steps * (6 * s["training step, 4 mlps"] + s["training step, all_mlps"] + s["training step, nonlocalized"]) / 8
        sweep = counts["sweep"] * (train + s["training-format evaluation"])
        grid = counts["grid"] * (train + s["grid run's measurements, 4 mlps"])
        rows.append({"model": name, "sweep runs": counts["sweep"], "sweep GPU-hours": sweep / 3600,
                     "grid runs": counts["grid"], "grid GPU-hours": grid / 3600})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--scale", choices=["paper", "tiny"], default="paper", help="tiny: the timed models shrunk for a CPU")
    parser.add_argument("--facts", type=int, default=None, help="athletes edited (and maintained): (a) 8, (b) the profile's")
    parser.add_argument("--steps", type=int, default=None, help="training steps of (a) (default: the profile's)")
    parser.add_argument("--relearn-steps", type=int, default=None)
    parser.add_argument("--soft-prompt-steps", type=int, default=None)
    parser.add_argument("--timing-steps", type=int, default=5, help="training steps timed per localization in (b)")
    parser.add_argument("--out", type=Path, default=None, help="also write the tables as JSON here")
    args = parser.parse_args()
    if args.scale == "paper" and not args.device.startswith("cuda"):
        parser.error("--scale paper builds 7-9B models: use --device cuda, or --scale tiny on a CPU")

    profile = gpu_profile()
    athletes, facts = load_sports(), load_counterfact()
    data = {"athletes": athletes, "facts": facts, "tokenizer": data_tokenizer(athletes, facts)}
    print(f"torch {torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""), flush=True)
    same = parity(args, profile, data)
    print("\n(a) the same tiny edit, evaluations and attacks, CPU float32 vs", args.device, "bf16 matrix products")
    print(same.to_string(float_format="{:.4f}".format))
    print(f"largest difference: {same.difference.max():.4f}", flush=True)
    rows = []
    for name in PAPER_SHAPES:
        rows += timing(args, profile, data, name)  # the model is freed when timing() returns
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    times = pd.DataFrame(rows)
    print(f"\n(b) seconds at the gpu profile's batch sizes ({args.scale} shapes, {args.device})")
    print(times.to_string(index=False, float_format="{:.3f}".format))
    hours = gpu_hours(times, profile)
    print(f"\n(c) the gpu profile's sweep and grid, per model (every run counted at the step cap, {profile['steps']} steps: an upper bound)")
    print(hours.to_string(index=False, float_format="{:.2f}".format))
    if args.out:
        args.out.write_text(json.dumps({"parity": same.reset_index(names="metric").to_dict(orient="records"),
                                        "timing": times.to_dict(orient="records"),
                                        "gpu_hours": hours.to_dict(orient="records")}, indent=1))


if __name__ == "__main__":
    main()

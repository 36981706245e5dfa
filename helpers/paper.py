"""The paper's reported numbers beside ours, measured the way the paper measured them where we can.

``data/paper_numbers.csv`` holds what Guo et al. (2025) report (see ``data/README.md``); our
numbers come from the run records. Nothing here is computed from the paper's numbers: they are
shown, not tested against. Two of the paper's measurements differ from our headline metrics
(:data:`helpers.results.HEADLINE`), so :func:`like_the_paper` takes ours as the paper took its own:

- sports forget error, maintain and edit accuracy: in the paper's question/answer format with a
  system instruction (:func:`helpers.prompts.sports_system_qa_prompt`), not the training prompt;
- the latent shares: probes trained on the *edited* model, read at one layer at the paper's
  relative depth (:func:`helpers.latent.paper_depth_layer`), not the mean over layers of probes
  trained on the original model.

Every difference that remains is a numbered footnote (:func:`side_by_side`), written from the
records (model, seeds, facts, steps, formats, attack, probe layer) and the paper's set-up below.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pandas as pd

from helpers.latent import blocks_at_paper_depth, paper_depth_layer
from helpers.prompts import SPORT_ANSWERS, SPORTS
from helpers.results import (
    HEADLINE,
    LATENT_HEADLINE,
    LATENT_NEW,
    RUN_COLUMNS,
    USABLE_MARGIN,
    dataset_of,
    headline_metrics,
    latent_by_layer,
    mcq_usability,
)
from helpers.stats import mean_ci

COLUMNS = ["task", "localization", "metric", "value", "model", "note"]
CITATION = "Guo et al. (2025), Mechanistic Unlearning, arXiv 2410.12949"

# The paper's set-up (from its text and code; see the project's paper notes), for the footnotes.
PAPER_MODELS = "Gemma-7B (28 blocks), Gemma-2-9B (42) and Llama-3-8B (32), in bf16"
PAPER_FACTS = {"sports_athlete_edit": "16 or 64 athletes", "counterfact_edit": "16 or 64 facts",
               "sports_sport_edit": "every known athlete of one sport, half trained and half measured"}
PAPER_STEPS = 50
PAPER_RELEARNING = "LoRA of rank 512 (alpha 32), learning rate 2e-4, 20 steps"

# Sports metrics the paper measures in its question/answer format with a system instruction.
SYSTEM_QA_METRICS = ("forget error", "maintain accuracy", "edit accuracy")
SYSTEM_QA = "the paper's Q/A with a system instruction"
# Completions are renormalized over the task's answers (helpers.tasks); the paper's over all four sports.
COMPLETION_ANSWERS = {"sports_athlete": SPORTS, "sports_sport": SPORT_ANSWERS}
NOTES = ("model", "seeds", "facts", "training", "system_qa", "mcq", "relearning", "latent")
EVERY_ROW = ("model", "seeds", "facts", "training")


def paper_numbers(path: Path | None = None) -> pd.DataFrame:
    """The paper's numbers, one row per (task, localization, metric)."""
    source = path or resources.files("helpers") / "data" / "paper_numbers.csv"
    with source.open() as handle:
        frame = pd.read_csv(handle, comment="#", keep_default_na=False, na_values=[""])
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{source} lacks the columns {missing}")
    return frame


def completion_chance(task: str) -> float:
    """Chance level of a sports completion format on ``task``: 1 / the number of answers it is scored over."""
    prefix = next((p for p in COMPLETION_ANSWERS if task.startswith(p)), None)
    if prefix is None:
        raise ValueError(f"No completion chance for task {task!r}: sports tasks only ({list(COMPLETION_ANSWERS)})")
    return 1 / len(COMPLETION_ANSWERS[prefix])


def system_qa_usability(records: pd.DataFrame, margin: float = USABLE_MARGIN) -> pd.DataFrame:
    """Per sports task: the unedited model's maintain accuracy in the paper's Q/A format (mean over
    seeds), chance, and whether it is usable (more than ``margin`` above chance).

    Empty where the records hold no such measurement.
    """
    column = "metrics_before.system_qa_maintain_accuracy"
    if column not in records:
        return pd.DataFrame(columns=["task", "accuracy before editing", "chance", "usable"])
    rows = []
    for task, group in records[records.task.map(dataset_of) == "sports"].groupby("task", sort=False):
        accuracy, chance = float(group.groupby("seed")[column].first().mean()), completion_chance(task)
        rows.append({"task": task, "accuracy before editing": accuracy, "chance": chance, "usable": accuracy > chance + margin})
    return pd.DataFrame(rows)


def model_layers(latent: pd.DataFrame) -> int:
    """The model's number of blocks, from :func:`helpers.results.latent_by_layer` (probes read every layer)."""
    layers = sorted(latent.layer.unique())
    if layers != list(range(len(layers))):
        raise ValueError(f"The records hold probes at layers {layers}, not at every layer of the model")
    return len(layers)


def _describe(metric: str, mcq_format: str | None, attack: str) -> str:
    """How a headline metric was measured (see :func:`helpers.results.headline_metrics`)."""
    if metric.startswith("MCQ"):
        return mcq_format.replace("_", " ") if isinstance(mcq_format, str) else "no usable MCQ format"
    if metric.startswith("paraphrase"):
        return "paraphrases"
    if metric == "relearning error":
        return f"{attack} relearning attack"
    if metric in (LATENT_HEADLINE, LATENT_NEW):
        return "probes trained on the original model, mean over layers"
    return "fact prompt (training format)"


def _system_qa_rows(records: pd.DataFrame) -> list[pd.DataFrame]:
    """Sports runs' forget error, maintain and edit accuracy in the paper's Q/A format."""
    sports = records[records.task.map(dataset_of) == "sports"]
    rows = []
    for metric in SYSTEM_QA_METRICS:
        column = HEADLINE[metric].replace("metrics.", "metrics.system_qa_")
        if column in sports:
            rows.append(sports[RUN_COLUMNS].assign(metric=metric, value=sports[column], **{"measured as": SYSTEM_QA}))
    return rows


def _depth_layer(n_layers: int) -> str:
    layer = paper_depth_layer(n_layers)
    return f"layer {layer} of 0-{n_layers - 1}"


def _paper_depth_rows(latent: pd.DataFrame | None) -> list[pd.DataFrame]:
    """The edited-model probes' shares (of :func:`helpers.results.latent_by_layer`) at the paper's relative depth."""
    if latent is None:
        return []
    n_layers = model_layers(latent)
    at = latent[(latent.probe == "edited") & (latent.layer == paper_depth_layer(n_layers))]
    how = f"probe trained on the edited model, {_depth_layer(n_layers)}"
    return [at[RUN_COLUMNS].assign(metric=metric, value=at[share], **{"measured as": how})
            for metric, share in ((LATENT_HEADLINE, "share_true"), (LATENT_NEW, "share_new")) if share in at]


def _latent(records: pd.DataFrame) -> pd.DataFrame | None:
    try:
        return latent_by_layer(records)
    except ValueError:  # no latent probes in these records
        return None


def like_the_paper(records: pd.DataFrame, attack: str = "lora") -> pd.DataFrame:
    """One row per run and headline metric: our value, measured as the paper measured its own where
    the records allow (see the module docstring), and how (column ``measured as``)."""
    headline = headline_metrics(records, attack=attack)
    names = [*HEADLINE, LATENT_HEADLINE, LATENT_NEW]
    long = headline.melt(id_vars=[*RUN_COLUMNS, "mcq_format"], value_vars=names, var_name="metric")
    long["measured as"] = [_describe(m, f, attack) for m, f in zip(long.metric, long.mcq_format)]
    closer = [*_system_qa_rows(records), *_paper_depth_rows(_latent(records))]
    if closer:
        closer = pd.concat(closer, ignore_index=True)
        keys = [*RUN_COLUMNS, "metric"]
        replaced = long[keys].merge(closer[keys], how="left", indicator=True)._merge.eq("both").to_numpy()
        long = pd.concat([long[~replaced], closer], ignore_index=True)
    return long.drop(columns="mcq_format")[[*RUN_COLUMNS, "metric", "value", "measured as"]]


def _footnotes(records: pd.DataFrame, ours: pd.DataFrame, attack: str) -> dict[str, str]:
    """The text of every footnote kind of :data:`NOTES` that applies, written from the records."""
    tasks = list(dict.fromkeys(records.task))

    def per_task(describe) -> str:
        return "; ".join(f"{task}: {describe(runs)}" for task, runs in records.groupby("task", sort=False))

    dtype = ", ".join(str(d).removeprefix("torch.") for d in records.dtype.unique())
    notes = {
        "model": f"Model: ours {', '.join(records.model.unique())} (weights in {dtype}); the paper's {PAPER_MODELS}, "
                 "the mean of the three unless its model column says otherwise.",
        "seeds": f"Seeds: ours {per_task(lambda g: g.seed.nunique())}, with a 95% Student-t interval over them (none "
                 "with one seed); the paper: one run per model, no interval.",
        "facts": f"Facts edited: ours {per_task(lambda g: ', '.join(map(str, sorted(g.n_forget.unique()))))}; the paper: "
                 + "; ".join(f"{t}: {PAPER_FACTS[t]}" for t in tasks if t in PAPER_FACTS) + ".",
        "training": f"Training: ours stops at chapter 04's completeness criterion or at the step cap "
                    f"({per_task(lambda g: _steps(g))}), hyper-parameters chosen on a held-out validation split; "
                    f"the paper: {PAPER_STEPS} steps, tuned on the evaluated facts.",
    }
    usability = system_qa_usability(records)
    if ours["measured as"].eq(SYSTEM_QA).any():
        before = "; ".join(
            f"{r['task']}: {r['accuracy before editing']:.2f} (chance {r['chance']:.2f}"
            f"{'' if r['usable'] else ', at chance: no evidence either way'})" for r in usability.to_dict("records"))
        answers = "; ".join(f"{t}: {round(1 / completion_chance(t))}" for t in usability.task)
        notes["system_qa"] = (f"Sports forget error, maintain and edit accuracy: both in {SYSTEM_QA} "
                              "(helpers.prompts.sports_system_qa_prompt; the instruction in our words), not in the "
                              f"training prompt. Ours renormalized over the task's answers ({answers}), the paper's "
                              f"over four. The unedited model's maintain accuracy in it: {before}.")
    lettered = mcq_usability(records).query("format == 'lettered_mcq'").to_dict("records")
    notes["mcq"] = "MCQ: the paper's lettered format; ours " + "; ".join(
        f"{r['task']}: {_headline_mcq(ours, r['task'])} (the unedited model's lettered MCQ accuracy "
        f"{r['accuracy before editing']:.2f}, chance {r['chance']:.2f})" for r in lettered) + "."
    relearn = {k.removeprefix("measurements.settings.relearn."): records[k].iloc[0]
               for k in records.columns if k.startswith("measurements.settings.relearn.")}
    how = ", ".join(f"{k.replace('_', ' ')} {relearn[k]}" for k in ("lora_rank", "lora_alpha", "learning_rate", "steps") if k in relearn)
    scope = "LoRA on every layer" if attack == "lora" else "fine-tuning of the edited weights"
    notes["relearning"] = f"Relearning: ours the {attack} attack ({scope}; {how}); the paper: {PAPER_RELEARNING}."
    latent = _latent(records)
    if latent is not None:
        n_layers = model_layers(latent)
        notes["latent"] = (f"Latent: both probes trained on the edited model's maintained athletes; the paper's read at "
                           f"Gemma-7B's hidden_states[8] (after 8 of 28 blocks), ours at {_depth_layer(n_layers)} (after "
                           f"{blocks_at_paper_depth(n_layers)} of {n_layers} blocks, the same relative depth); chapter 07 "
                           "shows every layer, and probes trained on the original model.")
    return notes


def _steps(runs: pd.DataFrame) -> str:
    """Step cap, mean steps taken and complete edits of one task's runs."""
    cap = ", ".join(map(str, sorted(runs["training.steps"].unique()))) if "training.steps" in runs else "?"
    return (f"cap {cap}, {runs.steps_taken.mean():.1f} steps on average, "
            f"{int(runs.criterion_reached.sum())} of {len(runs)} edits complete")


def _headline_mcq(ours: pd.DataFrame, task: str) -> str:
    formats = ours.loc[(ours.task == task) & ours.metric.str.startswith("MCQ"), "measured as"].unique()
    return ", ".join(formats) if len(formats) else "none"


def _row_notes(metric: str, measured_as: str) -> tuple[str, ...]:
    """The footnote kinds a row of the table needs, beyond :data:`EVERY_ROW`."""
    if measured_as == SYSTEM_QA:
        return ("system_qa",)
    if metric.startswith("MCQ") and measured_as != "lettered mcq":
        return ("mcq",)
    if metric == "relearning error":
        return ("relearning",)
    if metric in (LATENT_HEADLINE, LATENT_NEW):
        return ("latent",)
    return ()


def side_by_side(
    records: pd.DataFrame, model_name: str, attack: str = "lora", paper: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """Our mean and 95% interval over seeds next to the paper's value, for every metric the paper
    reports, with how ours was measured and the footnotes (numbered) that each row needs.

    ``records`` are :func:`helpers.grid.load_grid`'s; ours are :func:`like_the_paper`. Rows the
    paper reports but we did not run stay, with empty columns of ours. Returns the table and
    the footnotes, each starting with its number.
    """
    paper = paper_numbers() if paper is None else paper
    ours = like_the_paper(records, attack)
    rows = []
    for (task, localization, metric), group in ours.groupby(["task", "localization", "metric"], sort=False):
        mean, low, high = mean_ci(group.value)
        rows.append({"task": task, "localization": localization, "metric": metric, "mean": mean, "ci_low": low,
                     "ci_high": high, "n": int(group.value.notna().sum()), "measured as": "; ".join(group["measured as"].unique())})
    merged = paper.merge(pd.DataFrame(rows), on=["task", "localization", "metric"], how="left")
    texts = _footnotes(records, ours, attack)
    at_chance = set(system_qa_usability(records).query("not usable").task)
    measured = [m if not (m == SYSTEM_QA and t in at_chance) else f"{m} (at chance before editing)"
                for m, t in zip(merged["measured as"], merged.task)]
    kinds = [[*EVERY_ROW, *_row_notes(m, h)] if isinstance(h, str) else list(EVERY_ROW)
             for m, h in zip(merged.metric, merged["measured as"])]
    used = [k for k in NOTES if any(k in row for row in kinds) and k in texts]
    number = {k: i + 1 for i, k in enumerate(used)}
    table = pd.DataFrame({
        "task": merged.task, "localization": merged.localization, "metric": merged.metric,
        "paper": merged.value, "paper's model": merged.model + merged.note.fillna("").map(lambda n: f" ({n})" if n else ""),
        f"ours ({model_name})": merged["mean"], "95% CI low": merged.ci_low, "95% CI high": merged.ci_high,
        "seeds": merged.n.astype("Int64"), "ours measured as": measured,
        "notes": [" ".join(str(number[k]) for k in row if k in number) for row in kinds],
    })
    return table, [f"{number[k]}. {texts[k]}" for k in used]

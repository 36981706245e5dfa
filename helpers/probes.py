"""The paper's fact-lookup localization for sports: linear probes for the sport, layer by layer.

For every athlete we read the residual stream at the last token after every layer, for two
inputs: the one-shot fact prompt and the athlete's name alone (``<bos>{athlete}``). A
logistic-regression probe per layer predicts the sport. On the name alone the model has not
been asked anything, so a probe that decodes the sport there shows the sport being *looked
up* from the name. The layers where that accuracy climbs mark the fact-lookup MLPs
(:func:`fact_lookup_layers`), the localization the paper edits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedShuffleSplit, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from helpers.localization import Component, Localization
from helpers.models import LoadedModel
from helpers.prompts import sports_fact_prompt

FULL_PROMPT = "full prompt"
NAME_ONLY = "name only"
FACT_LOOKUP = "fact_lookup"
PROBE_MAX_ITER = 2000


def sample_per_sport(athletes: pd.DataFrame, n_per_sport: int | None, seed: int) -> pd.DataFrame:
    """Up to ``n_per_sport`` athletes of each sport, drawn with ``seed``; all of them if None or 0."""
    if athletes.empty:
        raise ValueError("The athlete table is empty: no known athletes to probe")
    if n_per_sport is not None and n_per_sport < 0:
        raise ValueError(f"n_per_sport must be None, 0 (all athletes) or positive, got {n_per_sport}")
    if not n_per_sport:
        return athletes.reset_index(drop=True)
    shuffled = athletes.sample(frac=1, random_state=seed)
    return shuffled.groupby("sport", sort=False).head(n_per_sport).sort_index().reset_index(drop=True)


def probe_texts(athletes: Sequence[str]) -> dict[str, list[str]]:
    """The two inputs probed per athlete: the one-shot fact prompt and the name alone.

    The tokenizer adds ``<bos>``, so the name alone is read as ``<bos>{athlete}``.
    """
    if len(athletes) == 0:
        raise ValueError("No athletes to build probe inputs for")
    return {FULL_PROMPT: [sports_fact_prompt(a) for a in athletes], NAME_ONLY: list(athletes)}


def last_token_residuals(
    model: LoadedModel, texts: Sequence[str], *, batch_size: int = 32, progress: bool = True, desc: str = "residuals"
) -> np.ndarray:
    """The residual stream at the last token after every layer (resid_post), shape (n_texts, n_layers, d_model).

    Each decoder layer's output is read with a forward hook. (Hugging Face's
    ``output_hidden_states`` replaces the last layer's output by the final-norm output, so
    it would give the wrong residual for the last layer.) Texts are sorted by length and
    left-padded into batches, with the positions they have unpadded.
    """
    if len(texts) == 0:
        raise ValueError("No texts to read residuals from")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if model.tokenizer.padding_side != "left":
        raise ValueError("The tokenizer must pad on the left, so that the last position is every text's last token")
    decoder = model.hf_model.get_decoder()
    lengths = [len(model.tokenizer(t)["input_ids"]) for t in texts]
    order = np.argsort(lengths, kind="stable")
    residuals = np.empty((len(texts), model.n_layers, model.hf_model.config.get_text_config().hidden_size), np.float32)
    batch_out: dict[int, torch.Tensor] = {}

    def keep_last_token(layer: int):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            batch_out[layer] = hidden[:, -1].float().cpu()

        return hook

    handles = [block.register_forward_hook(keep_last_token(l)) for l, block in enumerate(decoder.layers)]
    try:
        with torch.inference_mode():
            for start in tqdm(range(0, len(texts), batch_size), desc=desc, disable=not progress, unit="batch"):
                rows = order[start : start + batch_size]
                batch = model.tokenizer([texts[i] for i in rows], return_tensors="pt", padding=True).to(model.device)
                position_ids = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
                decoder(**batch, position_ids=position_ids)
                residuals[rows] = torch.stack([batch_out[l] for l in range(model.n_layers)], dim=1).numpy()
    finally:
        for handle in handles:
            handle.remove()
    return residuals


def athlete_residuals(model: LoadedModel, athletes: pd.DataFrame, *, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Last-token residuals after every layer for both probe inputs, keyed by input."""
    if athletes.empty:
        raise ValueError("The athlete table is empty: no known athletes to probe")
    return {
        name: last_token_residuals(model, texts, batch_size=batch_size, desc=name)
        for name, texts in probe_texts(athletes.athlete.tolist()).items()
    }


def probe_accuracy_by_layer(
    residuals: Mapping[str, np.ndarray], sports: Sequence[str], *, seeds: Sequence[int], test_fraction: float = 0.3
) -> pd.DataFrame:
    """Test accuracy of a logistic-regression probe for the sport, per input, layer and seed.

    Each seed draws one stratified train/test split of the athletes, shared by every input
    and layer. The probe standardizes the features, then fits a multinomial logistic
    regression (scikit-learn defaults, L2 with C=1). Returns one row per
    (input, layer, seed) with the test ``accuracy``.
    """
    labels = np.asarray(sports)
    splits = stratified_splits(labels, seeds=seeds, test_fraction=test_fraction)
    for name, features in residuals.items():
        if features.ndim != 3 or len(features) != len(labels):
            raise ValueError(
                f"Residuals for {name!r} must have shape (n_athletes={len(labels)}, n_layers, d_model), got {features.shape}"
            )
    rows = []
    # Each fit is a small problem (hundreds of athletes by d_model). With one BLAS thread the fits run about 15x
    # faster than with OpenBLAS's pools of one thread per core, which wait on each other: chapter 01's 180 fits took
    # 8 s against 123 s on two cores (the fitted accuracies differ by rounding, at most one test athlete).
    with threadpool_limits(limits=1, user_api="blas"):
        for name, features in residuals.items():
            for layer in tqdm(range(features.shape[1]), desc=f"probes, {name}", unit="layer"):
                probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=PROBE_MAX_ITER))
                scores = cross_val_score(probe, features[:, layer], labels, cv=splits)
                rows += [{"input": name, "layer": layer, "seed": s, "accuracy": a} for s, a in zip(seeds, scores)]
    return pd.DataFrame(rows)


def stratified_splits(
    labels: np.ndarray, *, seeds: Sequence[int], test_fraction: float
) -> list[tuple[np.ndarray, np.ndarray]]:
    """One stratified (train, test) split of the athletes per seed.

    Every sport needs at least ``ceil(1 / min(test_fraction, 1 - test_fraction))`` athletes
    (and at least 2), so that the train and the test set each get one of every sport.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    if len(seeds) == 0:
        raise ValueError("Give at least one seed for the probe splits")
    if any(not isinstance(s, int | np.integer) or s < 0 for s in seeds):
        raise ValueError(f"Seeds must be non-negative integers, got {list(seeds)}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"Seeds must be distinct, got {list(seeds)}")
    counts = pd.Series(labels).value_counts()
    if len(counts) < 2:
        raise ValueError(f"A sport probe needs athletes of at least 2 sports, got {list(counts.index)}")
    needed = max(2, math.ceil(1 / min(test_fraction, 1 - test_fraction)))
    too_few = counts[counts < needed]
    if not too_few.empty:
        raise ValueError(
            f"Every sport needs at least {needed} athletes for a test fraction of {test_fraction}; "
            f"too few for {too_few.to_dict()}"
        )
    return [
        next(StratifiedShuffleSplit(n_splits=1, test_size=test_fraction, random_state=int(s)).split(labels, labels))
        for s in seeds
    ]


def mean_accuracy(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds of the probe accuracy, per input and layer."""
    return results.groupby(["input", "layer"], sort=False).accuracy.agg(["mean", "std"]).reset_index()


def name_only_curve(results: pd.DataFrame) -> pd.Series:
    """The name-only probe accuracy per layer, averaged over seeds (indexed by layer)."""
    curve = results[results.input == NAME_ONLY].groupby("layer").accuracy.mean()
    if curve.empty:
        raise ValueError(f"The probe results have no {NAME_ONLY!r} rows")
    return curve


def fact_lookup_rule(
    rise_fraction: float = 0.1, margin: float = 0.02, min_gain: float | None = 0.02, patience: int = 2
) -> str:
    """The rule of :func:`fact_lookup_layers` in words, with its parameters."""
    levelled = (
        "" if min_gain is None
        else f" or the next {patience} layers each gain less than {min_gain} (the first climb has levelled off)"
    )
    return (
        f"Let a(l) be the name-only probe accuracy after layer l (mean over seeds), a_start = a(0) and "
        f"a_max = max a. The band starts at the first layer where a(l) > a_start + {rise_fraction} * "
        f"(a_max - a_start). It ends at the first layer from there on where a(l) >= a_max - {margin} "
        f"(the climb is done){levelled}. The fact-lookup MLPs are the MLPs of those layers (MLP l writes "
        f"into the residual after layer l)."
    )


def fact_lookup_layers(
    accuracy: Sequence[float], *, rise_fraction: float = 0.1, margin: float = 0.02,
    min_gain: float | None = 0.02, patience: int = 2,
) -> list[int]:
    """The layers whose MLPs do the fact lookup, read off the name-only accuracy curve.

    With a(l) the name-only accuracy after layer l, a_start = a(0) and a_max = max a, the
    band starts at the first layer where a(l) > a_start + rise_fraction * (a_max - a_start)
    (the climb has started). It ends at the first layer e from there on where a(e) >= a_max -
    margin (the climb is done) or where each of the next ``patience`` layers gains less than
    ``min_gain`` (the first climb has levelled off; a later, second climb is not lookup of
    the name; ``min_gain=None`` switches this criterion off). Gemma-7B's curve in the paper (.44 .48 .63 .85 .97 .97 1.0 for layers 0-6)
    gives layers 2..6; the paper used MLPs 2-7.
    """
    curve = np.asarray(accuracy, dtype=float)
    if curve.ndim != 1 or len(curve) < 2:
        raise ValueError(f"The accuracy curve needs one value per layer and at least 2 layers, got shape {curve.shape}")
    if np.isnan(curve).any() or (curve < 0).any() or (curve > 1).any():
        raise ValueError("Accuracies must be numbers in [0, 1]")
    if not 0.0 <= rise_fraction < 1.0:
        raise ValueError(f"rise_fraction must lie in [0, 1), got {rise_fraction}")
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must lie in [0, 1), got {margin}")
    if min_gain is not None and not 0.0 <= min_gain < 1.0:
        raise ValueError(f"min_gain must lie in [0, 1), got {min_gain}")
    if patience < 1:
        raise ValueError(f"patience must be at least 1, got {patience}")
    a_start, a_max = curve[0], curve.max()
    if a_max <= a_start:
        raise ValueError(
            f"The name-only accuracy never rises above its value after layer 0 ({a_start:.3f}): no fact-lookup band"
        )
    start = int(np.argmax(curve > a_start + rise_fraction * (a_max - a_start)))
    gains = np.diff(curve)  # gains[l] = a(l + 1) - a(l)
    for end in range(start, len(curve)):
        levelled = min_gain is not None and end + patience < len(curve) and (gains[end : end + patience] < min_gain).all()
        if curve[end] >= a_max - margin or levelled:
            break
    return list(range(start, end + 1))


def rule_sensitivity(
    curve: Sequence[float], min_gains: Sequence[float | None], margins: Sequence[float], **fixed: float
) -> pd.DataFrame:
    """The band the rule chooses (as ``"first-last"``) for each min_gain (rows) and margin (columns).

    A ``min_gain`` of ``None`` is the rule without the levelling-off criterion.
    """
    bands = {}
    for min_gain in min_gains:
        for margin in margins:
            layers = fact_lookup_layers(curve, min_gain=min_gain, margin=margin, **fixed)
            bands["off" if min_gain is None else min_gain, margin] = f"{layers[0]}-{layers[-1]}"
    table = pd.Series(bands).unstack()
    table.index.name, table.columns.name = "min_gain", "margin"
    return table


def fact_lookup_localization(model: LoadedModel, curve: pd.Series, **rule: float) -> Localization:
    """The fact-lookup MLPs chosen by :func:`fact_lookup_layers` (``rule``: its parameters).

    Each MLP's score is the accuracy gain of its layer over the layer before (layer 0 has
    no score: the embedding is not probed).
    """
    if list(curve.index) != list(range(model.n_layers)):
        raise ValueError(f"The curve needs one accuracy per layer 0..{model.n_layers - 1}, got layers {list(curve.index)}")
    layers = fact_lookup_layers(curve.to_numpy(), **rule)
    gains = curve.diff().dropna()
    return Localization.build(
        FACT_LOOKUP, model, [Component("mlp", l) for l in layers], fact_lookup_rule(**rule),
        {Component("mlp", int(l)): gain for l, gain in gains.items()},
    )


def probe_accuracy_figure(
    results: pd.DataFrame, *, band: Sequence[int] = (), baseline: float | None = None, title: str = ""
) -> go.Figure:
    """Probe accuracy by layer for each input: mean over seeds, error bars one standard deviation.

    ``band`` (the chosen fact-lookup layers) is shaded; ``baseline`` (e.g. the majority
    sport's share) is drawn as a dotted line.
    """
    summary = mean_accuracy(results)
    fig = px.line(
        summary, x="layer", y="mean", color="input", error_y="std", markers=True, range_y=[0, 1.02], title=title,
        labels={"mean": "probe test accuracy (mean over seeds, bars: 1 s.d.)", "layer": "residual stream after layer"},
    )
    if band:
        fig.add_vrect(x0=min(band) - 0.5, x1=max(band) + 0.5, opacity=0.12, line_width=0, fillcolor="green",
                      annotation_text="fact-lookup MLPs", annotation_position="top left")
    if baseline is not None:
        fig.add_hline(y=baseline, line_dash="dot", annotation_text="majority sport", annotation_position="bottom right")
    return fig

"""The paper's latent probing (sports): is the original sport still decodable after an edit?

Per layer, a logistic-regression probe learns the sport from the residual stream at the last
token of the fact prompt, on athletes whose sport the model still knows as true. It is then
applied to the evaluated forget athletes of the **edited** model, and we report the share
decoded as the original (true) sport and as the new one. An edit that only changes the
output leaves the true sport decodable in the middle layers.

Two variants (:func:`latent_metrics`):

- ``original``: probes fitted on the original model's hidden states (the stronger test:
  does the edited model still hold the representation the original model used?). Its
  training athletes are the maintained ones plus ``forget_train`` when it is disjoint from
  ``forget_eval`` (Sports-Sport-Edit), since the original model knows their true sport;
- ``edited``: probes fitted on the edited model's maintained athletes (the paper's).

A probe can only decode sports among its training labels. Golf, the new sport of
Sports-Sport-Edit, is no athlete's true sport, so its share is not measurable and is NaN
(not 0); likewise the true share of Sports-Sport-Edit for ``edited`` probes, whose maintained
athletes never play the edited sport. Shares are taken over the athletes whose sport is
among the probe's classes. A probe still assigns one of its classes to a state it never saw
(a golf state), so for Sports-Sport-Edit ``share_true`` says how often the original sport
wins among the sports the probe knows, not that golf was read.

Layer ``l`` is the residual stream after block ``l`` (blocks counted from 0). The paper reports
one layer of Gemma-7B (28 blocks): Hugging Face's ``hidden_states[8]``, the stream after 8 blocks
(index 0 is the embeddings), our layer 7. :func:`paper_depth_layer` gives the layer of another
model at the same relative depth.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from helpers.models import LoadedModel
from helpers.probes import PROBE_MAX_ITER, last_token_residuals
from helpers.tasks import EditTask

LayerStates = dict[int, np.ndarray]  # layer -> (n_athletes, d_model)
PROBE_VARIANTS = ("original", "edited")
PAPER_PROBE_BLOCKS, PAPER_N_LAYERS = 8, 28  # the paper's probe: Gemma-7B's hidden_states[8], after 8 of its 28 blocks


def blocks_at_paper_depth(n_layers: int) -> int:
    """How many of ``n_layers`` blocks lie below the paper's probe at the same relative depth.

    ``round(8 * n_layers / 28)`` (halves up), at least 1 and at most ``n_layers``: 8 for Gemma-7B
    itself, 5 for an 18-layer model. It is the index into Hugging Face's ``hidden_states``.
    """
    if n_layers < 1:
        raise ValueError(f"n_layers must be at least 1, got {n_layers}")
    return min(n_layers, max(1, int(np.floor(PAPER_PROBE_BLOCKS * n_layers / PAPER_N_LAYERS + 0.5))))


def paper_depth_layer(n_layers: int) -> int:
    """Our probe layer (the output of this block, ``L{layer}`` in :func:`latent_metrics`) at the
    paper's relative depth: 7 for 28 layers, 4 for 18 (see :func:`blocks_at_paper_depth`)."""
    return blocks_at_paper_depth(n_layers) - 1


def prompt_states(
    model: LoadedModel, prompts: Sequence[str], *, layers: Sequence[int] | None = None, batch_size: int = 32
) -> LayerStates:
    """The residual stream after each layer (all by default) at the last token of each prompt."""
    layers = range(model.n_layers) if layers is None else layers
    bad = [l for l in layers if not 0 <= l < model.n_layers]
    if bad:
        raise ValueError(f"Layers {bad} do not exist; the model has layers 0..{model.n_layers - 1}")
    residuals = last_token_residuals(model, prompts, batch_size=batch_size, progress=False)
    return {int(l): residuals[:, l] for l in layers}


def probe_training_set(task: EditTask, variant: str) -> pd.DataFrame:
    """The athletes a probe of ``variant`` learns from, labelled with their true sport (see the module docstring)."""
    if variant not in PROBE_VARIANTS:
        raise ValueError(f"variant must be one of {PROBE_VARIANTS}, got {variant!r}")
    frames = [task.maintain_train, task.maintain_eval]
    if variant == "original" and not set(task.forget_train.subject) & set(task.forget_eval.subject):
        frames.append(task.forget_train)
    return pd.concat(frames, ignore_index=True).drop_duplicates("subject", ignore_index=True)


@dataclass(frozen=True)
class AthleteStates:
    """One model's hidden states for a set of athletes, per layer, rows in the order of ``subjects``."""

    subjects: tuple[str, ...]
    states: LayerStates

    def of(self, subjects: Sequence[str]) -> LayerStates:
        """The states of ``subjects``, in that order."""
        index = {s: i for i, s in enumerate(self.subjects)}
        missing = [s for s in subjects if s not in index]
        if missing:
            raise ValueError(f"No hidden states for the athletes {missing[:5]}")
        rows = [index[s] for s in subjects]
        return {layer: features[rows] for layer, features in self.states.items()}


def task_states(model: LoadedModel, task: EditTask, *, layers: Sequence[int] | None = None, batch_size: int = 32) -> AthleteStates:
    """Hidden states at the fact prompt's last token of every athlete of a sports task, read once per model."""
    if task.candidates is None:
        raise ValueError("Latent probing is defined for sports tasks only")
    splits = [task.forget_train, task.forget_eval, task.maintain_train, task.maintain_eval]
    athletes = pd.concat(splits, ignore_index=True).drop_duplicates("subject", ignore_index=True)
    states = prompt_states(model, athletes.prompt.tolist(), layers=layers, batch_size=batch_size)
    return AthleteStates(tuple(athletes.subject), states)


def fit_layer_probes(states: Mapping[int, np.ndarray], labels: Sequence[str], *, seed: int = 0) -> dict[int, Pipeline]:
    """One probe per layer (standardized features, logistic regression) predicting ``labels``."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        raise ValueError(f"A probe needs labels of at least 2 classes, got {sorted(set(labels))}")
    probes = {}
    for layer, features in states.items():
        if features.ndim != 2 or len(features) != len(labels):
            raise ValueError(f"States of layer {layer} must have shape (n={len(labels)}, d_model), got {features.shape}")
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=PROBE_MAX_ITER, random_state=seed))
        probes[layer] = probe.fit(features, labels)
    return probes


def _share(predicted: np.ndarray, answers: np.ndarray, classes: np.ndarray) -> float:
    """Share of predictions equal to the answer, over answers a probe can predict; NaN if none."""
    measurable = np.isin(answers, classes)
    return float((predicted[measurable] == answers[measurable]).mean()) if measurable.any() else float("nan")


def decoded_shares(
    probes: Mapping[int, Pipeline], states: Mapping[int, np.ndarray], true: Sequence[str], new: Sequence[str] | None = None
) -> pd.DataFrame:
    """Per layer, the share of athletes decoded as their true and as their new sport.

    ``new=None`` (unlearning) gives NaN for ``share_new``; so does a new sport no probe was
    trained on.
    """
    true = np.asarray(true)
    new = np.full(len(true), "", dtype=object) if new is None else np.asarray(new)
    if len(true) == 0 or len(new) != len(true):
        raise ValueError(f"Need one true and one new answer per athlete, got {len(true)} and {len(new)}")
    missing = sorted(set(probes) - set(states))
    if missing:
        raise ValueError(f"No states for the probed layers {missing}")
    rows = []
    for layer, probe in probes.items():
        predicted = probe.predict(states[layer])
        if len(predicted) != len(true):
            raise ValueError(f"States of layer {layer} hold {len(predicted)} athletes, but {len(true)} answers were given")
        classes = probe.classes_
        rows.append({"layer": layer, "share_true": _share(predicted, true, classes), "share_new": _share(predicted, new, classes)})
    return pd.DataFrame(rows)


def latent_shares(task: EditTask, original: AthleteStates, edited: AthleteStates, *, seed: int = 0) -> pd.DataFrame:
    """Decoded shares per probe variant and layer, on the edited model's forget athletes.

    ``original`` and ``edited`` are :func:`task_states` of the model before and after the edit.
    """
    forget = task.forget_eval
    new = forget.new.tolist() if task.mode == "edit" else None
    frames = []
    for variant, states in (("original", original), ("edited", edited)):
        training = probe_training_set(task, variant)
        probes = fit_layer_probes(states.of(training.subject.tolist()), training.true.tolist(), seed=seed)
        shares = decoded_shares(probes, edited.of(forget.subject.tolist()), forget.true.tolist(), new)
        frames.append(shares.assign(probe=variant))
    return pd.concat(frames, ignore_index=True)


def latent_metrics(task: EditTask, original: AthleteStates, edited: AthleteStates, *, seed: int = 0) -> dict[str, float]:
    """:func:`latent_shares` as a flat dict: ``latent_{probe}_{true|new}_L{layer}`` and the
    mean over layers, ``latent_{probe}_{true|new}_mean`` (NaN where not measurable)."""
    shares = latent_shares(task, original, edited, seed=seed)
    metrics = {}
    for row in shares.itertuples(index=False):
        metrics[f"latent_{row.probe}_true_L{row.layer}"] = row.share_true
        metrics[f"latent_{row.probe}_new_L{row.layer}"] = row.share_new
    for variant, means in shares.groupby("probe", sort=False)[["share_true", "share_new"]].mean().iterrows():
        metrics[f"latent_{variant}_true_mean"] = float(means.share_true)
        metrics[f"latent_{variant}_new_mean"] = float(means.share_new)
    return metrics

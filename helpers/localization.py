"""Localizations: named sets of model components whose weights an edit may change.

A component is a whole MLP (``mlp.3``), a whole attention layer (``attn.10``) or a single
weight matrix (``mlp.3.up_proj``, ``attn.10.o_proj``). A :class:`Localization` keeps the
components, the scores that chose them, the rule that chose them (with any method settings in
``details``) and its parameter count;
it serializes to JSON and maps to the Hugging Face parameters it makes trainable.

The paper compares localizations at equal cost: the parameter count of the fact-lookup MLPs
is the *budget*, and every other method adds whole components in order of |score| until it
has used the budget (:func:`budget_matched`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from helpers.cache import results_dir, slug, write_json
from helpers.models import LoadedModel
from helpers.validation import read_json, text_list

KINDS = ("mlp", "attn")
# The paper's localizations, in its order: fact lookup (chapters 01-02), output tracing and the controls (chapter 03).
FACT_LOOKUP = "fact_lookup"
OUTPUT_TRACING = ("causal_tracing", "causal_tracing_mlps", "attribution_patching")
CONTROLS = ("random_matrices", "random_mlps", "all_mlps", "nonlocalized")
LOCALIZATIONS = (FACT_LOOKUP, *OUTPUT_TRACING, *CONTROLS)
_ID = re.compile(r"^(mlp|attn)\.(\d+)(?:\.(\w+))?$")


@dataclass(frozen=True, order=True)
class Component:
    """An MLP or attention layer, or one weight matrix of it (``matrix`` set)."""

    kind: str
    layer: int
    matrix: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Component kind must be one of {KINDS}, got {self.kind!r}")
        if self.layer < 0:
            raise ValueError(f"Component layer must be non-negative, got {self.layer}")

    @property
    def id(self) -> str:
        return f"{self.kind}.{self.layer}" + (f".{self.matrix}" if self.matrix else "")

    @classmethod
    def parse(cls, text: str) -> Component:
        match = _ID.match(text)
        if not match:
            raise ValueError(f"Cannot parse component {text!r}; expected e.g. 'mlp.3', 'attn.10' or 'mlp.3.up_proj'")
        return cls(match[1], int(match[2]), match[3])


def _block(model: LoadedModel, component: Component) -> nn.Module:
    layers = model.hf_model.get_decoder().layers
    if component.layer >= len(layers):
        raise ValueError(f"{component.id}: the model has {len(layers)} layers")
    layer = layers[component.layer]
    return layer.mlp if component.kind == "mlp" else layer.self_attn


# Building a TransformerBridge wraps each module, inserting this segment into parameter names.
_BRIDGE_SEGMENT = "_original_component."


def named_weights(model: LoadedModel, module: nn.Module | None = None) -> dict[str, nn.Parameter]:
    """Parameters by their Hugging Face names, the same whether or not the bridge was built."""
    source = model.hf_model if module is None else module
    return {name.replace(_BRIDGE_SEGMENT, ""): p for name, p in source.named_parameters()}


def weight_matrices(model: LoadedModel, component: Component) -> dict[str, nn.Parameter]:
    """The 2-D weight matrices of a component, keyed by their Hugging Face parameter names.

    Norm scales and biases are not part of any component.
    """
    block = _block(model, component)
    names = {id(p): n for n, p in named_weights(model).items()}
    matrices = {
        names[id(p)]: p
        for local, p in named_weights(model, block).items()
        if p.ndim == 2 and (component.matrix is None or local.split(".")[0] == component.matrix)
    }
    if not matrices:
        raise ValueError(f"{component.id} has no weight matrix in this model")
    return matrices


def all_components(model: LoadedModel, kinds: Iterable[str] = KINDS, matrices: bool = False) -> list[Component]:
    """Every MLP and/or attention layer (or every weight matrix of them), in layer order."""
    components = []
    for layer in range(model.n_layers):
        for kind in kinds:
            whole = Component(kind, layer)
            if matrices:
                block = _block(model, whole)
                components += [Component(kind, layer, n.split(".")[0]) for n, p in named_weights(model, block).items() if p.ndim == 2]
            else:
                components.append(whole)
    return components


def parameter_count(model: LoadedModel, components: Iterable[Component]) -> int:
    """Number of weights in the union of the components' matrices."""
    names = {}
    for component in components:
        names.update(weight_matrices(model, component))
    return sum(p.numel() for p in names.values())


@dataclass
class Localization:
    """A named set of components, how they were chosen, and what they cost."""

    name: str
    model_name: str
    components: list[Component]
    rule: str
    n_parameters: int
    scores: dict[str, float] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)  # how it was chosen: e.g. the path-patching variant, the tracing precision
    source: str = field(default="", compare=False, repr=False)  # the file it was loaded from, for errors

    def __post_init__(self) -> None:
        if not self.components:
            raise ValueError(f"Localization {self.name!r} has no components")

    @classmethod
    def build(
        cls, name: str, model: LoadedModel, components: Iterable[Component], rule: str,
        scores: Mapping[Component, float] | None = None, settings: Mapping | None = None,
    ) -> Localization:
        components = sorted(set(components), key=lambda c: (c.kind, c.layer, c.matrix or ""))
        return cls(
            name=name, model_name=model.name, components=components, rule=rule,
            n_parameters=parameter_count(model, components),
            scores={c.id: float(s) for c, s in (scores or {}).items()}, settings=dict(settings or {}),
        )

    @property
    def start_layer(self) -> int:
        """The lowest layer a component of this localization is in: nothing below it changes."""
        return min(c.layer for c in self.components)

    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.components]

    def parameter_names(self, model: LoadedModel) -> list[str]:
        """The Hugging Face parameter names this localization makes trainable."""
        self._check_model(model)
        names: dict[str, nn.Parameter] = {}
        for component in self.components:
            names.update(weight_matrices(model, component))
        self._check_count(model, sum(p.numel() for p in names.values()))
        return sorted(names)

    def set_trainable(self, model: LoadedModel) -> list[nn.Parameter]:
        """Freeze every parameter, then unfreeze this localization's; return the trainable ones."""
        wanted = set(self.parameter_names(model))
        trainable = []
        for name, parameter in named_weights(model).items():
            parameter.requires_grad_(name in wanted)
            if name in wanted:
                trainable.append(parameter)
        return trainable

    def overlap(self, other: Localization, model: LoadedModel) -> float:
        """Share of this localization's parameters that ``other`` also trains."""
        mine, theirs = self.parameter_names(model), set(other.parameter_names(model))
        params = named_weights(model)
        return sum(params[n].numel() for n in mine if n in theirs) / self.n_parameters

    def to_dict(self) -> dict:
        return {
            "name": self.name, "model_name": self.model_name, "components": self.ids,
            "rule": self.rule, "n_parameters": self.n_parameters, "scores": self.scores, "settings": self.settings,
        }

    @classmethod
    def from_dict(cls, data: Mapping, source: str = "Localization data") -> Localization:
        """The inverse of :meth:`to_dict`; errors name ``source`` (the file, when loaded from one)."""
        missing = {"name", "model_name", "components", "rule", "n_parameters"} - set(data)
        if missing:
            raise ValueError(f"{source} lacks {sorted(missing)}")
        try:
            return cls(
                name=data["name"], model_name=data["model_name"],
                components=[Component.parse(c) for c in text_list(data["components"], source, "the localization", "components")],
                rule=data["rule"], n_parameters=int(data["n_parameters"]), scores=dict(data.get("scores", {})),
                settings=dict(data.get("settings", {})), source=source,
            )
        except (TypeError, ValueError) as error:
            raise ValueError(f"{source}: {error}") from None

    def save(self, dataset: str) -> Path:
        """Write to ``results/localizations/<model>/<dataset>/<name>.json``; return the path."""
        path = localization_path(self.model_name, dataset, self.name)
        write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, model_name: str, dataset: str, name: str) -> Localization:
        path = localization_path(model_name, dataset, name)
        if not path.exists():
            raise FileNotFoundError(f"No localization at {path}; run the localization notebooks first")
        return cls.from_dict(read_json(path, "Localization file"), f"Localization file {path}")

    def _check_model(self, model: LoadedModel) -> None:
        if model.name != self.model_name:
            raise ValueError(f"Localization {self.name!r} was made for {self.model_name!r}, not {model.name!r}")

    def _check_count(self, model: LoadedModel, count: int) -> None:
        """Refuse a stated parameter count that the components do not have in ``model``."""
        if count != self.n_parameters:
            raise ValueError(
                f"{self.source or f'Localization {self.name!r}'}: n_parameters is {self.n_parameters:,}, but its "
                f"components {self.ids} have {count:,} parameters in {model.name!r}; rebuild it with the localization notebooks"
            )


def localization_path(model_name: str, dataset: str, name: str) -> Path:
    """Where localizations live, for the editing notebooks to read."""
    return results_dir("localizations", slug(model_name), dataset) / f"{slug(name)}.json"


def budget_matched(
    name: str, model: LoadedModel, scores: Mapping[Component, float], budget: int,
    *, mlps_only: bool = False, method: str = "", settings: Mapping | None = None,
) -> Localization:
    """The paper's rule: add whole components in order of |score| until ``budget`` is used.

    Components are added while the running parameter count is below the budget, so the
    result exceeds the budget by less than one component. ``settings`` (how the scores were
    computed) are stored with the localization and enter the key of every run that trains it.
    """
    if budget <= 0:
        raise ValueError(f"budget must be positive, got {budget}")
    candidates = [c for c in scores if not mlps_only or c.kind == "mlp"]
    if not candidates:
        raise ValueError(f"No {'MLP ' if mlps_only else ''}scores to choose components from")
    chosen, used = [], 0
    for component in sorted(candidates, key=lambda c: (-abs(scores[c]), c.layer, c.kind)):
        if used >= budget:
            break
        chosen.append(component)
        used += parameter_count(model, [component])
    rule = (
        f"{method} scores summed per {'MLP' if mlps_only else 'MLP and attention layer'}; "
        f"whole components added by |score| until the budget of {budget:,} parameters is used"
    )
    return Localization.build(name, model, chosen, rule, {c: scores[c] for c in candidates}, settings)


def random_matrices(name: str, model: LoadedModel, budget: int, seed: int) -> Localization:
    """Control: weight matrices drawn at random (seeded) until the budget is used."""
    matrices = all_components(model, matrices=True)
    order = np.random.default_rng(seed).permutation(len(matrices))
    chosen, used = [], 0
    for index in order:
        if used >= budget:
            break
        chosen.append(matrices[index])
        used += parameter_count(model, [matrices[index]])
    return Localization.build(name, model, chosen, f"random weight matrices (seed {seed}) up to {budget:,} parameters")


def random_mlps(name: str, model: LoadedModel, n_mlps: int, seed: int) -> Localization:
    """Control: as many whole MLPs as the fact-lookup set, drawn at random (seeded)."""
    if not 0 < n_mlps <= model.n_layers:
        raise ValueError(f"n_mlps must lie in 1..{model.n_layers}, got {n_mlps}")
    layers = np.random.default_rng(seed).choice(model.n_layers, n_mlps, replace=False)
    return Localization.build(name, model, [Component("mlp", int(l)) for l in layers], f"{n_mlps} random MLPs (seed {seed})")


def all_mlps(name: str, model: LoadedModel) -> Localization:
    """Control: every MLP."""
    return Localization.build(name, model, all_components(model, ["mlp"]), "every MLP")


def nonlocalized(name: str, model: LoadedModel) -> Localization:
    """Control: every attention and MLP weight matrix."""
    return Localization.build(name, model, all_components(model), "every attention and MLP weight matrix")

"""Component sets, parameter budgets, and the trainable set they define (tiny 4-layer Gemma3)."""

import json

import pytest
import torch
from transformers import Gemma3ForCausalLM

from helpers.localization import (
    Component,
    Localization,
    all_components,
    all_mlps,
    budget_matched,
    nonlocalized,
    parameter_count,
    random_matrices,
    random_mlps,
)
from helpers.models import EMBEDDED_ARCHITECTURE_ID, LoadedModel
from tests.conftest import tiny_gemma_config


@pytest.fixture(scope="module")
def model(gemma_tokenizer) -> LoadedModel:
    torch.manual_seed(0)
    hf = Gemma3ForCausalLM(tiny_gemma_config(len(gemma_tokenizer), 4))
    return LoadedModel("tiny", hf, gemma_tokenizer, EMBEDDED_ARCHITECTURE_ID)


def test_component_ids_round_trip():
    for text in ("mlp.3", "attn.10", "mlp.2.up_proj"):
        assert Component.parse(text).id == text
    with pytest.raises(ValueError, match="Cannot parse component 'ffn.3'"):
        Component.parse("ffn.3")
    with pytest.raises(ValueError, match="kind must be one of"):
        Component("conv", 1)


def test_parameter_counts_are_the_weight_matrices(model):
    config = model.hf_model.config
    d, ff = config.hidden_size, config.intermediate_size
    q, kv = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    assert parameter_count(model, [Component("mlp", 0)]) == 3 * d * ff
    assert parameter_count(model, [Component("attn", 0)]) == 2 * d * q + 2 * d * kv
    assert parameter_count(model, [Component("mlp", 0, "up_proj")]) == d * ff
    assert parameter_count(model, [Component("mlp", 0), Component("mlp", 0, "up_proj")]) == 3 * d * ff


def test_trainable_set_is_exactly_the_localization(model):
    loc = Localization.build("flu", model, [Component("mlp", 1), Component("attn", 2, "o_proj")], "test")
    trainable = loc.set_trainable(model)
    names = {n for n, p in model.hf_model.named_parameters() if p.requires_grad}
    assert names == {
        "model.layers.1.mlp.gate_proj.weight", "model.layers.1.mlp.up_proj.weight",
        "model.layers.1.mlp.down_proj.weight", "model.layers.2.self_attn.o_proj.weight",
    }
    assert sum(p.numel() for p in trainable) == loc.n_parameters


def test_names_survive_building_the_bridge(gemma_tokenizer):
    """The bridge wraps modules (renaming parameters); localizations must not notice."""
    torch.manual_seed(0)
    fresh = LoadedModel("tiny", Gemma3ForCausalLM(tiny_gemma_config(len(gemma_tokenizer), 2)), gemma_tokenizer,
                        EMBEDDED_ARCHITECTURE_ID)
    loc = random_matrices("random", fresh, 50_000, seed=0)
    before = (loc.parameter_names(fresh), all_components(fresh, matrices=True))
    assert fresh.bridge is not None
    assert (loc.parameter_names(fresh), all_components(fresh, matrices=True)) == before
    assert len(loc.set_trainable(fresh)) == len(before[0])


def test_budget_matching_stays_within_one_component(model):
    flu = Localization.build("flu", model, [Component("mlp", 1), Component("mlp", 2)], "test")
    scores = {c: float(i % 5) - 2.0 for i, c in enumerate(all_components(model))}
    largest = max(parameter_count(model, [c]) for c in scores)
    for mlps_only in (False, True):
        loc = budget_matched("ct", model, scores, flu.n_parameters, mlps_only=mlps_only, method="test")
        assert flu.n_parameters <= loc.n_parameters < flu.n_parameters + largest
        assert not mlps_only or all(c.kind == "mlp" for c in loc.components)
        ranked = sorted((c for c in scores if not mlps_only or c.kind == "mlp"), key=lambda c: -abs(scores[c]))
        assert set(loc.components) == set(ranked[: len(loc.components)])
    random = random_matrices("random", model, flu.n_parameters, seed=0)
    assert flu.n_parameters <= random.n_parameters < flu.n_parameters + largest
    assert random.ids == random_matrices("random", model, flu.n_parameters, seed=0).ids
    assert random.ids != random_matrices("random", model, flu.n_parameters, seed=1).ids


def test_controls(model):
    assert [c.id for c in all_mlps("all", model).components] == [f"mlp.{l}" for l in range(4)]
    assert nonlocalized("all", model).n_parameters == parameter_count(model, all_components(model))
    mlps = random_mlps("rm", model, 2, seed=3)
    assert len(mlps.components) == 2 and all(c.kind == "mlp" for c in mlps.components)
    with pytest.raises(ValueError, match="n_mlps must lie in"):
        random_mlps("rm", model, 9, seed=0)
    with pytest.raises(ValueError, match="budget must be positive"):
        budget_matched("x", model, {Component("mlp", 0): 1.0}, 0)
    with pytest.raises(ValueError, match="has no components"):
        Localization.build("empty", model, [], "none")
    with pytest.raises(ValueError, match="the model has 4 layers"):
        parameter_count(model, [Component("mlp", 7)])


def test_json_round_trip_and_results_folder(model, tmp_path, monkeypatch):
    monkeypatch.setenv("MECHUNLEARN_RESULTS", str(tmp_path))
    loc = Localization.build("fact lookup", model, [Component("mlp", 0)], "rule", {Component("mlp", 0): 0.3},
                             settings={"precision": "bfloat16", "n_prompts": 8})
    path = loc.save("sports")
    saved = json.loads(path.read_text())
    assert path.is_relative_to(tmp_path) and saved["components"] == ["mlp.0"] and saved["settings"]["precision"] == "bfloat16"
    assert Localization.load("tiny", "sports", "fact lookup") == loc
    with pytest.raises(FileNotFoundError, match="run the localization notebooks first"):
        Localization.load("tiny", "counterfact", "fact lookup")
    with pytest.raises(ValueError, match="was made for 'tiny'"):
        loc.parameter_names(LoadedModel("other", model.hf_model, model.tokenizer, EMBEDDED_ARCHITECTURE_ID))


def saved_file(model, **changes):
    """A saved localization whose JSON has ``changes`` applied, as a user editing the file would."""
    path = Localization.build("edited", model, [Component("mlp", 0)], "rule").save("sports")
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return path


def test_a_stated_parameter_count_the_components_do_not_have_is_refused_on_use(model, tmp_path, monkeypatch):
    monkeypatch.setenv("MECHUNLEARN_RESULTS", str(tmp_path))
    path = saved_file(model, n_parameters=123)
    loaded = Localization.load("tiny", "sports", "edited")
    with pytest.raises(ValueError, match=f"Localization file {path}: n_parameters is 123, but its components \\['mlp.0'\\] have"):
        loaded.set_trainable(model)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"components": []}, "has no components"),
        ({"components": "mlp.0"}, "field 'components' must be a list of strings"),
        ({"components": ["mlp.x"]}, "Cannot parse component 'mlp.x'"),
    ],
)
def test_a_localization_file_without_usable_components_is_refused(model, tmp_path, monkeypatch, changes, message):
    monkeypatch.setenv("MECHUNLEARN_RESULTS", str(tmp_path))
    path = saved_file(model, **changes)
    with pytest.raises(ValueError, match=f"Localization file {path}: .*{message}"):
        Localization.load("tiny", "sports", "edited")


def test_a_malformed_localization_file_is_named(model, tmp_path, monkeypatch):
    monkeypatch.setenv("MECHUNLEARN_RESULTS", str(tmp_path))
    path = Localization.build("edited", model, [Component("mlp", 0)], "rule").save("sports")
    path.write_text(path.read_text()[:-10])
    with pytest.raises(ValueError, match=f"Localization file {path} is not valid UTF-8 JSON"):
        Localization.load("tiny", "sports", "edited")


def test_settings_are_saved_and_older_files_without_them_load(model, tmp_path, monkeypatch):
    monkeypatch.setenv("MECHUNLEARN_RESULTS", str(tmp_path))
    loc = Localization.build("fact lookup", model, [Component("mlp", 0)], "rule", settings={"head_paths": "mlps_recomputed"})
    path = loc.save("counterfact")
    assert json.loads(path.read_text())["settings"] == {"head_paths": "mlps_recomputed"}
    assert Localization.load("tiny", "counterfact", "fact lookup").settings == {"head_paths": "mlps_recomputed"}
    older = {k: v for k, v in loc.to_dict().items() if k != "settings"}
    assert Localization.from_dict(older).settings == {}

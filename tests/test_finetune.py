"""The fine-tuning engine on a tiny Gemma3: what trains, what stays, and the losses' values."""

import copy
import math
from collections.abc import Sequence
from dataclasses import replace
from unittest import mock

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from helpers.finetune import (
    TrainingConfig,
    Float32Masters,
    answer_logits,
    completeness_check,
    criterion_shortfall,
    joint_answer_logits,
    restored,
    retain_chunks,
    retain_rows,
    step_loss,
    train_localized,
    unlearning_loss,
)
import helpers.finetune as finetune
from helpers.precision import Precision
from helpers.localization import Component, Localization, named_weights
from helpers.models import LoadedModel
from helpers.prompts import SPORTS
from helpers.records import training_format_metrics
from helpers.scoring import answer_probabilities, first_token_ids, unembed
from helpers.tasks import sports_athlete_edit

NAMES = ["Alice", "Boris", "Chen", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ingrid", "Jonas", "Kwame", "Lucia"]
ATHLETES = pd.DataFrame({"athlete": NAMES, "sport": [SPORTS[i % 3] for i in range(len(NAMES))]})
TEXT = ["The river flows slowly through the green valley towards the distant sea. " * 20]


@pytest.fixture()
def setup(tiny_model):
    task = sports_athlete_edit(ATHLETES, 4, seed=0, n_maintain=4)
    localization = Localization.build("mlp1", tiny_model, [Component("mlp", 1)], "test")
    return tiny_model, task, localization, retain_chunks(tiny_model, TEXT, 16)


def snapshot(model):
    return {n: p.detach().clone() for n, p in named_weights(model).items()}


def test_only_the_localization_trains_and_is_restored(setup):
    model, task, localization, chunks = setup
    before = snapshot(model)
    config = TrainingConfig(learning_rate=1e-2, steps=3, batch_size=4, retain_batch_size=2, retain_length=16, retain_positions=4)
    with restored(model, localization):
        train_localized(model, localization, task, chunks, config, seed=0, progress=False)
        after = snapshot(model)
    trained = set(localization.parameter_names(model))
    for name, value in before.items():
        assert torch.equal(value, after[name]) != (name in trained), name
    assert all(torch.equal(value, named_weights(model)[name]) for name, value in before.items())
    assert not any(p.requires_grad for p in model.hf_model.parameters())


def test_editing_lowers_the_forget_loss(setup):
    model, task, localization, chunks = setup
    config = TrainingConfig(learning_rate=1e-2, steps=15, forget_weight=5.0, batch_size=4, retain_batch_size=0,
                            retain_length=16, retain_positions=4)
    with restored(model, localization):
        log = train_localized(model, localization, task, chunks, config, seed=0, progress=False)
    # A random tiny model's logits are small (tied embeddings of std 0.02 times a normalized
    # residual), so its loss can fall by about a nat at most; it must fall clearly.
    assert log.forget[-1] < log.forget[0] - 0.3
    assert len(log.total) == 15 and log.seconds > log.check_seconds > 0
    # A tiny random model cannot reach P(new) >= .9: checked every 5 steps, it trains to the cap.
    assert [c["step"] for c in log.checks] == [5, 10, 15] and log.steps == 15 and log.reached is False
    assert all(c["shortfall"] > 0 and not c["complete"] for c in log.checks)


def test_training_stops_once_the_edit_is_complete(setup):
    """With a criterion this model can reach (P(new) >= .39, P(true) <= .33), training stops at the first check that meets it."""
    model, task, localization, chunks = setup
    config = TrainingConfig(learning_rate=1e-2, steps=12, forget_weight=5.0, batch_size=4, retain_batch_size=0,
                            retain_length=16, retain_positions=4, check_every=2, min_p_new=0.39, max_p_true=0.33)
    with restored(model, localization):
        log = train_localized(model, localization, task, chunks, config, seed=0, progress=False)
        final = completeness_check(model, task, config, log.steps)
        metrics = training_format_metrics(model, task)  # forget_train is forget_eval in this task
    assert log.reached is True and log.steps < config.steps and log.steps % config.check_every == 0
    assert [c["step"] for c in log.checks] == list(range(2, log.steps + 1, 2))
    assert not any(c["complete"] for c in log.checks[:-1])
    last = log.checks[-1]
    assert last["p_new"] >= 0.39 and last["p_true"] <= 0.33 and last["shortfall"] == 0
    assert final["p_true"] == pytest.approx(last["p_true"], abs=1e-5)
    assert final["p_true"] == pytest.approx(1 - metrics["forget_error"], abs=1e-5)
    assert final["p_new"] == pytest.approx(metrics["edit_accuracy"], abs=1e-5)


def test_a_criterion_met_at_the_first_check_stops_there_and_no_check_trains_to_the_cap(setup):
    model, task, localization, chunks = setup
    config = TrainingConfig(learning_rate=1e-3, steps=6, batch_size=4, retain_batch_size=0, retain_length=16,
                            retain_positions=4, check_every=2, min_p_new=0.01, max_p_true=0.99)
    with restored(model, localization):
        stopped = train_localized(model, localization, task, chunks, config, seed=0, progress=False)
    with restored(model, localization):
        unchecked = train_localized(model, localization, task, chunks, replace(config, check_every=0), seed=0, progress=False)
    assert stopped.steps == 2 and stopped.reached is True
    assert unchecked.steps == 6 and unchecked.checks == [] and unchecked.reached is None and unchecked.check_seconds == 0
    assert unchecked.forget[:2] == pytest.approx(stopped.forget)  # the same steps up to the stop


def plain_answer_loss(model, frame: pd.DataFrame, column: str) -> torch.Tensor:
    """Cross-entropy toward ``column``'s first token, one prompt per forward pass, every position's logits."""
    losses = []
    for prompt, answer in zip(frame.prompt, frame[column]):
        logits = model.hf_model(model.tokenizer(prompt, return_tensors="pt").input_ids).logits[0, -1]
        losses.append(-logits.log_softmax(-1)[first_token_ids(model.tokenizer, [answer])[0]])
    return torch.stack(losses).mean()


def test_one_step_loss_is_the_papers_sum_of_plainly_computed_terms(setup):
    model, task, _, chunks = setup
    config = TrainingConfig(forget_weight=2.5, retain_length=16, retain_positions=4)
    forget, maintain, general = task.forget_train.iloc[:3], task.maintain_train.iloc[:2], chunks[:2]
    with torch.no_grad():
        loss = step_loss(model, "edit", forget, maintain, general, config, torch.Generator().manual_seed(3))
        positions = torch.randperm(15, generator=torch.Generator().manual_seed(3))[:4].sort().values
        logits = model.hf_model(general).logits[:, positions]
        retain = F.cross_entropy(logits.flatten(0, 1), general[:, positions + 1].flatten())
        expected = {"forget": plain_answer_loss(model, forget, "new"), "maintain": plain_answer_loss(model, maintain, "true"),
                    "retain": retain}
        for term, value in expected.items():
            torch.testing.assert_close(getattr(loss, term), value, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(loss.total, 2.5 * expected["forget"] + expected["maintain"] + retain, atol=1e-5, rtol=1e-4)
        unlearn = step_loss(model, "unlearn", forget, maintain, general[:0], config, torch.Generator())
        with_new = answer_logits(model, list(forget.prompt))
        torch.testing.assert_close(unlearn.forget, unlearning_loss(model, with_new, list(forget.true)))
        assert unlearn.retain == 0 and unlearn.total == 2.5 * unlearn.forget + unlearn.maintain
    with pytest.raises(ValueError, match="mode must be one of"):
        step_loss(model, "forget", forget, maintain, general, config, torch.Generator())


def test_training_logs_the_step_loss_of_each_batch(setup):
    """train_localized computes each step's loss with step_loss, on a batch of the task, and logs its terms."""
    model, task, localization, chunks = setup
    config = TrainingConfig(learning_rate=1e-2, steps=2, batch_size=2, retain_batch_size=1, retain_length=16,
                            retain_positions=4, check_every=0)
    calls = []

    def recording(*args):
        calls.append((args, step_loss(*args)))
        return calls[-1][1]

    with restored(model, localization), mock.patch.object(finetune, "step_loss", side_effect=recording):
        log = train_localized(model, localization, task, chunks, config, seed=0, progress=False)
    assert len(calls) == 2
    for (_, mode, forget, maintain, general, *_), _ in calls:
        assert mode == task.mode and len(forget) == len(maintain) == 2 and general.shape == (1, 16)
        assert set(forget.subject) <= set(task.forget_train.subject) and set(maintain.subject) <= set(task.maintain_train.subject)
    for term in ("forget", "maintain", "retain", "total"):
        assert getattr(log, term) == [float(getattr(loss, term).detach()) for _, loss in calls], term


def test_criterion_shortfall_is_zero_exactly_when_complete():
    config = TrainingConfig()  # P(new) >= .9 and P(true) <= .1
    assert criterion_shortfall(0.05, 0.95, config) == 0
    assert criterion_shortfall(0.3, 0.95, config) == pytest.approx(0.2)
    assert criterion_shortfall(0.3, 0.6, config) == pytest.approx(0.5)
    assert criterion_shortfall(0.1, None, config) == 0 and criterion_shortfall(0.4, None, config) == pytest.approx(0.3)


def logits_with_p_true(model, answer: str, p_true: Sequence[float]) -> torch.Tensor:
    """Last-position logits where ``answer``'s first token has each probability in ``p_true``."""
    vocab, target = len(model.tokenizer), first_token_ids(model.tokenizer, [answer])[0]
    p = torch.tensor(p_true, dtype=torch.float64)
    logits = torch.zeros(len(p_true), vocab, dtype=torch.float64)
    logits[:, target] = torch.log(p / (1 - p) * (vocab - 1))
    return logits.float().requires_grad_(True)


def test_unlearning_loss_is_minus_log_one_minus_p(setup):
    model, task, *_ = setup
    prompts, answers = list(task.forget_train.prompt), list(task.forget_train.true)
    with torch.no_grad():
        logits = answer_logits(model, prompts)
        p = logits.softmax(-1)[range(len(prompts)), first_token_ids(model.tokenizer, answers)]
        torch.testing.assert_close(unlearning_loss(model, logits, answers), -torch.log(1 - p).mean())


@pytest.mark.parametrize("p_true", [0.995, 0.9999])
def test_unlearning_loss_pushes_the_surest_facts_hardest(setup, p_true):
    """No cap: the loss is -log(1 - p) and its gradient grows as p approaches 1."""
    model = setup[0]
    logits = logits_with_p_true(model, "football", [0.9, p_true])
    losses = [unlearning_loss(model, logits[i : i + 1], ["football"]) for i in range(2)]
    torch.testing.assert_close(losses[1], torch.tensor(-math.log(1 - p_true)), rtol=2e-3, atol=0)
    grads = [torch.autograd.grad(loss, logits)[0].abs().sum() for loss in losses]
    assert grads[1] > grads[0] > 0


def test_unlearning_loss_drops_forgotten_facts(setup):
    """Once log P(true) < floor (-5 by default) a fact adds nothing: no loss, no gradient."""
    model = setup[0]
    logits = logits_with_p_true(model, "football", [math.exp(-5.5), math.exp(-4.5)])
    loss = unlearning_loss(model, logits, ["football"] * 2)
    gradient = torch.autograd.grad(loss, logits)[0]
    assert gradient[0].abs().sum() == 0 and gradient[1].abs().sum() > 0
    torch.testing.assert_close(loss, torch.tensor(-math.log(1 - math.exp(-4.5)) / 2), rtol=0, atol=2e-4)
    assert unlearning_loss(model, logits, ["football"] * 2, floor=-6.0) > loss


def test_joint_logits_match_separate_forward_passes(setup):
    model, task, *_ = setup
    forget, maintain = list(task.forget_train.prompt), list(task.maintain_train.prompt)
    with torch.no_grad():
        joint = joint_answer_logits(model, forget, maintain)
        torch.testing.assert_close(joint[0], answer_logits(model, forget), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(joint[1], answer_logits(model, maintain), atol=1e-5, rtol=1e-4)


def test_retain_loss_on_every_position_is_the_full_next_token_loss(setup):
    model, _, _, chunks = setup
    with torch.no_grad():
        logits = model.hf_model(chunks[:2]).logits
        full = F.cross_entropy(logits[:, :-1].flatten(0, 1), chunks[:2, 1:].flatten())
        hidden, targets = retain_rows(model, chunks[:2], chunks.shape[1] - 1, torch.Generator().manual_seed(0))
        estimate = F.cross_entropy(unembed(model, hidden), targets)
    torch.testing.assert_close(estimate, full, atol=1e-4, rtol=1e-4)


def test_one_unembedding_gives_each_terms_logits(setup):
    model, task, _, chunks = setup
    forget, maintain = list(task.forget_train.prompt), list(task.maintain_train.prompt)
    with torch.no_grad():
        hidden, _ = retain_rows(model, chunks[:2], 4, torch.Generator().manual_seed(0))
        together = joint_answer_logits(model, forget, maintain, extra=hidden)
        apart = joint_answer_logits(model, forget, maintain, extra=hidden, one_unembedding=False)
    assert [len(part) for part in together] == [len(forget), len(maintain), 8]
    for one, other in zip(together, apart):
        torch.testing.assert_close(one, other, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(together[2], unembed(model, hidden).float(), atol=1e-5, rtol=1e-4)


def test_bad_inputs(setup):
    model, task, localization, chunks = setup
    with pytest.raises(ValueError, match="learning_rate=2.0"):
        TrainingConfig(learning_rate=2.0)
    with pytest.raises(ValueError, match="steps=0"):
        TrainingConfig(steps=0)
    with pytest.raises(ValueError, match="check_every=-1, min_p_new=1.5, max_p_true=1.0"):
        TrainingConfig(check_every=-1, min_p_new=1.5, max_p_true=1.0)
    with pytest.raises(ValueError, match="No parameter requires gradients"):
        train_localized(model, localization, task, chunks, TrainingConfig(steps=1), seed=0, progress=False)
    empty = type(task)(task.name, task.mode, task.forget_train.head(0), task.forget_eval, task.maintain_train,
                       task.maintain_eval, task.candidates)
    with pytest.raises(ValueError, match="empty forget set"):
        train_localized(model, localization, empty, chunks, TrainingConfig(steps=1), seed=0, progress=False)
    with pytest.raises(ValueError, match="No general text"):
        retain_chunks(model, [], 16)


def test_bf16_steps_match_plain_autocast_and_leave_float32_weights_outside(setup):
    model, task, localization, chunks = setup
    prompts = list(task.forget_train.prompt)
    embedding = model.hf_model.get_input_embeddings().weight
    with restored(model, localization) as trainable:
        precision = Precision(model, "bfloat16")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            expected = answer_logits(model, prompts)
        with precision.active():
            assert model.hf_model.get_output_embeddings().weight.dtype == torch.bfloat16
            assert model.hf_model.get_input_embeddings().weight is embedding  # the tied lookup stays float32
            assert all(p.dtype == torch.float32 for p in trainable)
            logits = answer_logits(model, prompts)
        torch.testing.assert_close(logits, expected, atol=0, rtol=0)
        logits.sum().backward()  # the graph keeps the bf16 copies it used
        assert all(p.grad is not None for p in trainable)
    assert all(p.dtype == torch.float32 for p in model.hf_model.parameters())
    assert model.hf_model.get_output_embeddings().weight is embedding


def model_in(model: LoadedModel, dtype: torch.dtype) -> LoadedModel:
    """A copy of ``model`` holding its weights in ``dtype``."""
    return LoadedModel(model.name, copy.deepcopy(model.hf_model).to(dtype), model.tokenizer, model.architecture_id)


def trained_change(model: LoadedModel, localization, task, chunks, config) -> dict[str, torch.Tensor]:
    """How far a run moves each trained matrix (float32), and the dtype the weights are left in."""
    with restored(model, localization) as parameters:
        names = {id(p): n for n, p in named_weights(model).items()}
        before = {names[id(p)]: p.detach().float().clone() for p in parameters}
        train_localized(model, localization, task, chunks, config, seed=0, progress=False)
        assert all(p.dtype == model.hf_model.dtype for p in parameters)
        return {names[id(p)]: p.detach().float() - before[names[id(p)]] for p in parameters}


def test_a_bf16_model_trains_through_float32_master_weights(setup):
    """Steps of 3e-5 are below a bf16 weight's rounding step: only float32 masters let them add up."""
    model, task, localization, chunks = setup
    bf16 = model_in(model, torch.bfloat16)
    reference = model_in(bf16, torch.float32)  # the same (bf16-rounded) weights, held in float32
    config = TrainingConfig(learning_rate=3e-5, steps=10, batch_size=4, retain_batch_size=0, retain_length=16,
                            retain_positions=4, precision="bfloat16")
    expected = trained_change(reference, localization, task, chunks, config)
    moved = trained_change(bf16, localization, task, chunks, config)
    for name, change in expected.items():
        error = (moved[name] - change).norm() / change.norm()
        assert error < 0.3, (name, float(error))
    with pytest.raises(ValueError, match="cannot train in float32"), restored(bf16, localization):
        train_localized(bf16, localization, task, chunks, replace(config, precision="float32"), seed=0, progress=False)


def test_master_weights_keep_what_rounding_would_erase():
    weight = torch.nn.Parameter(torch.full((4,), 0.03, dtype=torch.bfloat16))
    masters = Float32Masters([weight])
    for _ in range(10):
        with masters.training():
            assert weight.dtype == torch.float32
            with torch.no_grad():
                weight -= 2e-5
    assert weight.dtype == torch.bfloat16
    torch.testing.assert_close(masters.masters[0], torch.full((4,), float(torch.tensor(0.03).bfloat16()) - 2e-4))
    assert torch.all(weight < torch.tensor(0.03).bfloat16())


def test_a_checkpoint_joins_every_check_and_leaves_the_training_unchanged(setup):
    """The strength curve's hook: called once per check with the model mid-training; the same steps with it and without."""
    model, task, localization, chunks = setup
    config = TrainingConfig(learning_rate=1e-2, steps=3, batch_size=4, retain_batch_size=0, retain_length=16,
                            retain_positions=4, check_every=2)
    seen = []

    def checkpoint(m, t):
        seen.append(float(answer_probabilities(m, t.forget_train, t.forget_train.new.tolist(), t.candidates).mean()))
        return {"paraphrase_edit_accuracy": 0.5 + len(seen)}

    with restored(model, localization):
        plain = train_localized(model, localization, task, chunks, config, seed=0, progress=False)
    with restored(model, localization):
        measured = train_localized(model, localization, task, chunks, config, seed=0, progress=False, checkpoint=checkpoint)
    assert [c["step"] for c in measured.checks] == [2, 3] and len(seen) == 2
    assert [c["paraphrase_edit_accuracy"] for c in measured.checks] == [1.5, 2.5]
    assert measured.total == plain.total
    for with_hook, without in zip(measured.checks, plain.checks):
        assert {k: with_hook[k] for k in without} == without
    assert seen == pytest.approx([c["p_new"] for c in measured.checks], abs=1e-5)  # the hook sees the check's weights
    assert 0 < measured.checkpoint_seconds < measured.check_seconds and plain.checkpoint_seconds == 0
    with pytest.raises(ValueError, match="check_every must be at least 1"), restored(model, localization):
        train_localized(model, localization, task, chunks, replace(config, check_every=0), seed=0, progress=False,
                        checkpoint=checkpoint)

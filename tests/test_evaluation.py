"""Robustness metrics: each checked against an independent computation or a known answer."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.counterfact import load_counterfact
from helpers.evaluation import (
    answerable_formats,
    evaluate_task,
    format_metrics,
    format_usability,
    general_loss,
    mcq_chance,
    mcq_questions,
    mcq_question_text,
    neighborhood_accuracy,
    other_kind_quiz,
    per_fact_probabilities,
    quiz_accuracy,
    task_formats,
)
from helpers.finetune import retain_chunks
from helpers.prompts import LETTERS, SPORTS, paraphrase_prompts_for_sports, sports_system_qa_prompt
from helpers.scoring import candidate_probs, renormalize
from helpers.tasks import counterfact_edit, sports_athlete_edit
from tests.conftest import CI_CANDIDATES

NAMES = ["Alice", "Boris", "Chen", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ingrid", "Jonas", "Kwame", "Lucia"]
ATHLETES = pd.DataFrame({"athlete": NAMES, "sport": [SPORTS[i % 3] for i in range(len(NAMES))]})
FACTS = load_counterfact().head(40)
TEXT = ["The river flows slowly through the green valley, past old mills and quiet farms. " * 8]


def sports_task(mode="edit"):
    return sports_athlete_edit(ATHLETES, 3, seed=0, mode=mode, n_maintain=3)


def counterfact_task(mode="edit"):
    return counterfact_edit(FACTS, 3, seed=0, mode=mode, n_maintain=3)


def p_sport(model, prompts, answers, candidates=SPORTS):
    """P(answer) renormalized over the sport answers (the three sports, as Sports-Athlete-Edit scores), per prompt."""
    probs = renormalize(candidate_probs(model, prompts, list(candidates), progress=False))
    return probs[np.arange(len(prompts)), [candidates.index(a) for a in answers]]


def p_vocab(model, prompts, answers):
    """Full-vocabulary probability of each answer's first token."""
    return candidate_probs(model, prompts, [[a] for a in answers], progress=False)[:, 0]


def test_fact_metrics_of_a_sports_task_are_renormalized_probabilities(tiny_model):
    task = sports_task()
    forget, maintain = task.forget_eval, task.maintain_eval
    metrics = format_metrics(tiny_model, task, "fact")
    assert metrics["forget_error"] == pytest.approx(1 - p_sport(tiny_model, forget.prompt.tolist(), forget.true).mean(), abs=1e-6)
    assert metrics["edit_accuracy"] == pytest.approx(p_sport(tiny_model, forget.prompt.tolist(), forget.new).mean(), abs=1e-6)
    assert metrics["maintain_accuracy"] == pytest.approx(p_sport(tiny_model, maintain.prompt.tolist(), maintain.true).mean(), abs=1e-6)
    assert set(format_metrics(tiny_model, sports_task("unlearn"), "fact")) == {"forget_error", "maintain_accuracy"}


def test_counterfact_completions_are_full_vocabulary_first_token_probabilities(tiny_model):
    task = counterfact_task()
    forget = task.forget_eval
    metrics = format_metrics(tiny_model, task, "fact")
    assert metrics["forget_error"] == pytest.approx(1 - p_vocab(tiny_model, forget.prompt.tolist(), forget.true).mean(), abs=1e-6)
    assert metrics["edit_accuracy"] == pytest.approx(p_vocab(tiny_model, forget.prompt.tolist(), forget.new).mean(), abs=1e-6)
    # Paraphrases and neighbors: mean over each fact's prompts, then over facts.
    per_fact = [p_vocab(tiny_model, list(r.paraphrase_prompts), [r.true] * len(r.paraphrase_prompts)).mean() for r in forget.itertuples()]
    assert format_metrics(tiny_model, task, "paraphrase")["paraphrase_forget_error"] == pytest.approx(1 - np.mean(per_fact), abs=1e-6)
    neighbors = [p_vocab(tiny_model, list(r.neighborhood_prompts), [r.true] * len(r.neighborhood_prompts)).mean() for r in forget.itertuples()]
    assert neighborhood_accuracy(tiny_model, task) == pytest.approx(np.mean(neighbors), abs=1e-6)


def test_sports_paraphrases_average_the_templates_per_fact(tiny_model):
    task = sports_task()
    maintain = task.maintain_eval
    prompts = paraphrase_prompts_for_sports("Alice")
    assert len(prompts) >= 4 and all("Alice" in p for p in prompts) and prompts[0].startswith("Question: What sport")
    per_fact = [p_sport(tiny_model, paraphrase_prompts_for_sports(r.subject), [r.true] * len(prompts)).mean() for r in maintain.itertuples()]
    metrics = format_metrics(tiny_model, task, "paraphrase")
    assert metrics["paraphrase_maintain_accuracy"] == pytest.approx(np.mean(per_fact), abs=1e-6)


def test_the_papers_sports_format_is_measured_on_sports_tasks_only(tiny_model):
    task = sports_task()
    forget, maintain = task.forget_eval, task.maintain_eval
    metrics = format_metrics(tiny_model, task, "system_qa")
    prompts = [sports_system_qa_prompt(a) for a in forget.subject]
    assert metrics["system_qa_edit_accuracy"] == pytest.approx(p_sport(tiny_model, prompts, forget.new).mean(), abs=1e-6)
    assert metrics["system_qa_forget_error"] == pytest.approx(1 - p_sport(tiny_model, prompts, forget.true).mean(), abs=1e-6)
    maintained = [sports_system_qa_prompt(a) for a in maintain.subject]
    assert metrics["system_qa_maintain_accuracy"] == pytest.approx(p_sport(tiny_model, maintained, maintain.true).mean(), abs=1e-6)
    assert "system_qa" in task_formats(task) and "system_qa" not in task_formats(counterfact_task())
    with pytest.raises(ValueError, match="Unknown format 'system_qa' for task 'counterfact_edit'"):
        format_metrics(tiny_model, counterfact_task(), "system_qa")


def test_with_two_candidates_edit_accuracy_equals_forget_error(tiny_model):
    """When true and new are the only answers scored, P(new) = 1 - P(true)."""
    task = sports_task()
    two = pd.DataFrame({
        "subject": ["Alice", "Boris"], "prompt": [task.forget_eval.prompt.iloc[0], task.forget_eval.prompt.iloc[1]],
        "true": ["basketball"] * 2, "new": ["baseball"] * 2, "wrong_options": [["baseball"]] * 2,
        "paraphrase_prompts": [[]] * 2, "neighborhood_prompts": [[]] * 2,
    })
    task = replace(task, forget_eval=two, maintain_eval=two, candidates=("basketball", "baseball"))
    for fmt in ("fact", "paraphrase", "lettered_mcq", "cloze_mcq"):
        metrics = format_metrics(tiny_model, task, fmt)
        prefix = "" if fmt == "fact" else f"{fmt}_"
        assert metrics[f"{prefix}edit_accuracy"] == pytest.approx(metrics[f"{prefix}forget_error"], abs=1e-6), fmt


def test_mcq_questions_point_at_the_true_and_new_options_and_orders_are_averaged(tiny_model):
    task = sports_task()
    forget = task.forget_eval
    one = mcq_questions(forget, "forget", "lettered_mcq", mcq_question_text(task), with_new=True, n_orders=1, seed=3)
    two = mcq_questions(forget, "forget", "lettered_mcq", mcq_question_text(task), with_new=True, n_orders=2, seed=3)
    assert two[: len(forget)] == one and len(two) == 2 * len(forget)
    assert {q.prompt for q in two[len(forget) :]} != {q.prompt for q in one}
    for q in two:
        row = forget.iloc[q.fact]
        assert q.candidates == LETTERS[:4] and f"{LETTERS[q.true]}. {row.true}\n" in q.prompt
        assert f"{LETTERS[q.new]}. {row.new}\n" in q.prompt and row.subject in q.prompt
    scores = [per_fact_probabilities(tiny_model, qs, renormalized=True) for qs in (two[: len(forget)], two[len(forget) :], two)]
    pd.testing.assert_frame_equal(scores[2], (scores[0] + scores[1]) / 2, atol=1e-6)
    metrics = format_metrics(tiny_model, task, "lettered_mcq", n_orders=2, seed=3)
    assert metrics["lettered_mcq_forget_error"] == pytest.approx(1 - scores[2].p_true.mean(), abs=1e-6)
    assert metrics["lettered_mcq_edit_accuracy"] == pytest.approx(scores[2].p_new.mean(), abs=1e-6)


def test_counterfact_mcq_asks_the_completion_with_the_fact_options(tiny_model):
    task = counterfact_task()
    questions = mcq_questions(task.forget_eval, "forget", "cloze_mcq", mcq_question_text(task), with_new=True, n_orders=1, seed=0)
    for q, row in zip(questions, task.forget_eval.itertuples()):
        assert row.prompt in q.prompt and sorted(q.candidates) == sorted([row.true, *row.wrong_options])
        assert q.candidates[q.true] == row.true and q.candidates[q.new] == row.new
    assert mcq_chance(task) == pytest.approx(0.25)


def test_general_loss_is_the_models_own_next_token_loss(tiny_model):
    chunks = retain_chunks(tiny_model, TEXT, 16)
    assert len(chunks) >= 3
    with torch.inference_mode():
        first = tiny_model.hf_model(input_ids=chunks[:1], labels=chunks[:1]).loss.item()
        both = tiny_model.hf_model(input_ids=chunks[:2], labels=chunks[:2]).loss.item()
    assert general_loss(tiny_model, chunks, max_tokens=16) == pytest.approx(first, rel=1e-5)
    assert general_loss(tiny_model, chunks, max_tokens=40, batch_size=1) == pytest.approx(both, rel=1e-5)
    assert general_loss(tiny_model, TEXT, max_tokens=None) > 0


def test_quiz_is_of_the_other_kind_without_the_tasks_subjects(tiny_model):
    facts = load_counterfact()
    country = facts.subject.iloc[0]
    athletes = pd.concat([ATHLETES, pd.DataFrame({"athlete": [country], "sport": ["golf"]})], ignore_index=True)
    task = sports_athlete_edit(athletes, 3, seed=0, n_maintain=6)
    assert country in set().union(*task.subjects().values())
    quiz = other_kind_quiz(task, athletes=ATHLETES, facts=facts, n=len(facts), seed=0)
    assert country not in set(quiz.subject) and len(quiz) == (facts.subject != country).sum()
    small = other_kind_quiz(task, athletes=ATHLETES, facts=facts, n=5, seed=1)
    assert small.equals(other_kind_quiz(task, athletes=ATHLETES, facts=facts, n=5, seed=1)) and len(small) == 5
    assert quiz_accuracy(tiny_model, task, small) == pytest.approx(p_vocab(tiny_model, small.prompt.tolist(), small.true).mean(), abs=1e-6)

    cf_task = counterfact_task()
    athlete_quiz = other_kind_quiz(cf_task, athletes=ATHLETES, facts=facts, n=4, seed=0)
    assert set(athlete_quiz.true) <= set(SPORTS) and set(athlete_quiz.subject) <= set(NAMES)
    expected = p_sport(tiny_model, athlete_quiz.prompt.tolist(), athlete_quiz.true).mean()
    assert quiz_accuracy(tiny_model, cf_task, athlete_quiz) == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="other kind"):
        quiz_accuracy(tiny_model, task, athlete_quiz)
    with pytest.raises(ValueError, match="shares subjects"):
        quiz_accuracy(tiny_model, task, small.assign(subject=country))


def test_evaluate_task_gives_every_metric(tiny_model):
    formats = ["", "paraphrase_", "lettered_mcq_", "cloze_mcq_"]
    sports, counterfact = (sports_task(), [*formats, "system_qa_"], set()), (counterfact_task(), formats, {"neighborhood_accuracy"})
    for task, prefixes, extra in (sports, counterfact):  # the paper's Q/A format on sports tasks only
        quiz = other_kind_quiz(task, athletes=ATHLETES, facts=FACTS, n=4)
        metrics = evaluate_task(tiny_model, task, quiz=quiz, general_chunks_or_texts=TEXT, max_general_tokens=64)
        expected = {f"{p}{m}" for p in prefixes for m in ("forget_error", "edit_accuracy", "maintain_accuracy")}
        assert set(metrics) == expected | extra | {"general_loss", "quiz_accuracy"}
        assert all(0 <= v <= 1 for k, v in metrics.items() if k != "general_loss") and metrics["general_loss"] > 0
        assert metrics["forget_error"] == pytest.approx(format_metrics(tiny_model, task, "fact")["forget_error"])
    unlearn = sports_task("unlearn")
    quiz = other_kind_quiz(unlearn, athletes=ATHLETES, facts=FACTS, n=4)
    metrics = evaluate_task(tiny_model, unlearn, quiz=quiz, general_chunks_or_texts=TEXT, max_general_tokens=16, n_orders=1)
    assert not [k for k in metrics if "edit" in k]
    some = evaluate_task(tiny_model, unlearn, quiz=quiz, general_chunks_or_texts=TEXT, max_general_tokens=16, n_orders=1,
                         formats=["fact", "cloze_mcq"])
    assert set(some) == {"forget_error", "maintain_accuracy", "cloze_mcq_forget_error", "cloze_mcq_maintain_accuracy",
                         "general_loss", "quiz_accuracy"}
    with pytest.raises(ValueError, match="Unknown formats \\['system_qa'\\]"):
        evaluate_task(tiny_model, counterfact_task(), quiz=quiz, general_chunks_or_texts=TEXT, formats=["system_qa"])


def test_format_usability_compares_the_maintained_p_true_with_chance():
    task = sports_task()
    before = {"lettered_mcq_maintain_accuracy": 0.31, "cloze_mcq_maintain_accuracy": 0.29}
    assert format_usability(before, task) == {"lettered_mcq": True, "cloze_mcq": False}
    assert format_usability(before, task, margin=0.1) == {"lettered_mcq": False, "cloze_mcq": False}
    with pytest.raises(ValueError, match="lack"):
        format_usability({"lettered_mcq_maintain_accuracy": 0.5}, task)
    assert answerable_formats(["paraphrase", "lettered_mcq", "cloze_mcq"], before, task) == ("paraphrase", "lettered_mcq")


def test_bad_inputs(tiny_model):
    task = sports_task()
    with pytest.raises(ValueError, match="Unknown format 'essay'"):
        format_metrics(tiny_model, task, "essay")
    with pytest.raises(ValueError, match="n_orders must be at least 1"):
        format_metrics(tiny_model, task, "cloze_mcq", n_orders=0)
    with pytest.raises(ValueError, match="empty maintain_eval"):
        format_metrics(tiny_model, replace(task, maintain_eval=task.maintain_eval.head(0)), "fact")
    with pytest.raises(ValueError, match="CounterFact tasks only"):
        neighborhood_accuracy(tiny_model, task)
    with pytest.raises(ValueError, match="not among the options"):
        format_metrics(tiny_model, replace(task, forget_eval=task.forget_eval.assign(new="tennis")), "lettered_mcq")
    with pytest.raises(ValueError, match="max_tokens"):
        general_loss(tiny_model, TEXT, max_tokens=0)
    with pytest.raises(ValueError, match="shape"):
        general_loss(tiny_model, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="quiz is empty"):
        quiz_accuracy(tiny_model, task, other_kind_quiz(task, athletes=ATHLETES, facts=FACTS, n=2).head(0))
    with pytest.raises(ValueError, match="n must be"):
        other_kind_quiz(task, athletes=ATHLETES, facts=FACTS, n=0)


@pytest.mark.model
def test_the_embedded_model_knows_its_known_facts_in_every_metric(embedded_model):
    from helpers.counterfact import known_facts
    from helpers.general_text import load_general_text
    from helpers.knowledge import candidate_sample
    from helpers.sports import known_athletes, load_sports

    # The ci profile's sample of candidates: its scores are cached once the ci book has run
    athletes = known_athletes(embedded_model, candidate_sample(load_sports(), CI_CANDIDATES))
    facts = known_facts(embedded_model, candidate_sample(load_counterfact(), CI_CANDIDATES))
    task = sports_athlete_edit(athletes, 4, seed=0, n_maintain=8)
    quiz = other_kind_quiz(task, athletes=athletes, facts=facts, n=8)
    metrics = evaluate_task(embedded_model, task, quiz=quiz, general_chunks_or_texts=load_general_text("heldout"), max_general_tokens=512)
    # The cached knowledge scores hold each sport's full-vocabulary probability: renormalize over the three.
    scores = athletes.set_index("athlete").loc[task.maintain_eval.subject, [f"p_{a}" for a in SPORTS]].to_numpy()
    p_true = renormalize(scores)[np.arange(len(scores)), [SPORTS.index(s) for s in task.maintain_eval.true]]
    assert metrics["maintain_accuracy"] == pytest.approx(p_true.mean(), abs=1e-4)
    assert metrics["quiz_accuracy"] >= 0.5  # every known fact has P(true) >= 0.5
    assert 1 < metrics["general_loss"] < 6

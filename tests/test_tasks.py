"""Task splits are seeded and never overlap where they must not."""

import pandas as pd
import pytest

from helpers.counterfact import load_counterfact
from helpers.prompts import SPORTS
from helpers.tasks import counterfact_edit, sports_athlete_edit, sports_sport_edit

ATHLETES = pd.DataFrame({
    "athlete": [f"Athlete {i}" for i in range(90)],
    "sport": [SPORTS[i % 3] for i in range(90)],
})


def disjoint(task, *splits):
    """No fact (prompt) in two splits, and no forget subject among the maintained facts."""
    prompts = {split: set(getattr(task, split).prompt) for split in splits}
    subjects = task.subjects()
    maintained = subjects["maintain_train"] | subjects["maintain_eval"]
    return (
        all(not prompts[a] & prompts[b] for i, a in enumerate(splits) for b in splits[i + 1 :])
        and not (subjects["forget_train"] | subjects["forget_eval"]) & maintained
    )


def test_athlete_edit_moves_each_athlete_to_another_sport():
    task = sports_athlete_edit(ATHLETES, 16, seed=0, n_maintain=20)
    assert len(task.forget_train) == 16 and task.forget_train.equals(task.forget_eval)
    assert (task.forget_train.new != task.forget_train.true).all() and task.forget_train.new.isin(SPORTS).all()
    assert disjoint(task, "forget_train", "maintain_train", "maintain_eval")
    assert len(task.maintain_train) == len(task.maintain_eval) == 20
    again = sports_athlete_edit(ATHLETES, 16, seed=0, n_maintain=20)
    assert task.forget_train.equals(again.forget_train) and task.maintain_eval.equals(again.maintain_eval)
    assert not task.forget_train.equals(sports_athlete_edit(ATHLETES, 16, seed=1, n_maintain=20).forget_train)


def test_sport_edit_trains_on_half_and_evaluates_on_the_other_half():
    task = sports_sport_edit(ATHLETES, "baseball", seed=0)
    assert (task.forget_train.true == "baseball").all() and (task.forget_eval.new == "golf").all()
    assert len(task.forget_train) == len(task.forget_eval) == 15
    assert disjoint(task, "forget_train", "forget_eval", "maintain_train", "maintain_eval")
    assert "baseball" not in set(task.maintain_train.true) | set(task.maintain_eval.true)


def test_unlearning_has_no_new_answer():
    task = sports_athlete_edit(ATHLETES, 8, seed=0, mode="unlearn")
    assert (task.forget_train.new == "").all() and task.name == "sports_athlete_unlearn"


def test_counterfact_edit_and_validation_holdout():
    facts = load_counterfact().head(200)
    evaluated = counterfact_edit(facts, 16, seed=0)
    assert (evaluated.forget_train.new == facts.set_index("subject").loc[evaluated.forget_train.subject].target_new.to_numpy()).all()
    validation = counterfact_edit(facts, 16, seed=0, holdout=set(evaluated.forget_eval.subject))
    assert not set(validation.forget_train.subject) & set(evaluated.forget_eval.subject)
    assert disjoint(evaluated, "forget_train", "maintain_train", "maintain_eval")


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least one fact"):
        sports_athlete_edit(ATHLETES, 0, seed=0)
    with pytest.raises(ValueError, match="only 90 are available"):
        sports_athlete_edit(ATHLETES, 500, seed=0)
    with pytest.raises(ValueError, match="mode must be one of"):
        counterfact_edit(load_counterfact().head(50), 4, seed=0, mode="forget")
    with pytest.raises(ValueError, match="sport must be one of"):
        sports_sport_edit(ATHLETES, "golf", seed=0)

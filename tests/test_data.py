"""Schema tests of the shipped data sets, and clear errors on bad data."""

import json

import pytest

from helpers.counterfact import load_counterfact, records_to_frame
from helpers.general_text import load_general_text
from helpers.prompts import SPORTS
from helpers.sports import load_sports


def test_sports_csv_schema():
    athletes = load_sports()
    assert list(athletes.columns) == ["athlete", "sport"]
    assert len(athletes) >= 900
    assert athletes.sport.value_counts().min() >= 300
    assert set(athletes.sport) == set(SPORTS)
    assert not athletes.athlete.str.lower().duplicated().any()


def test_counterfact_schema():
    facts = load_counterfact()
    assert len(facts) >= 400
    assert facts.relation_id.nunique() >= 6
    assert facts.case_id.is_unique
    assert (facts.paraphrase_prompts.map(len) >= 2).all()
    assert (facts.neighborhood_prompts.map(len) >= 5).all()
    for row in facts.itertuples():
        assert len(row.mcq_wrong_options) == 3 and row.mcq_wrong_options[0] == row.target_new
        assert row.target_true not in row.mcq_wrong_options
        assert all(row.subject in p for p in row.paraphrase_prompts)
        assert not any(row.subject in p for p in row.neighborhood_prompts)
        assert row.target_true.lower() not in row.subject.lower()


def test_counterfact_neighbors_share_the_true_answer():
    """A neighborhood prompt asks about another subject whose true answer is the same."""
    facts = load_counterfact()
    answers = {(r.relation_id, r.subject): r.target_true for r in facts.itertuples()}
    subjects_by_relation = facts.groupby("relation_id").subject.apply(list).to_dict()
    for row in facts.sample(50, random_state=0).itertuples():
        for prompt in row.neighborhood_prompts:
            neighbors = [s for s in subjects_by_relation[row.relation_id] if s in prompt and s != row.subject]
            assert any(answers[(row.relation_id, s)] == row.target_true for s in neighbors), prompt


def test_general_text_size_and_disjoint_heldout(gemma_tokenizer):
    train, heldout = load_general_text("train"), load_general_text("heldout")
    assert heldout and train and not set(train) & set(heldout)
    assert len(train) + len(heldout) == len(load_general_text("all"))
    n_tokens = sum(len(gemma_tokenizer(t)["input_ids"]) for t in train + heldout)
    assert n_tokens >= 20_000
    assert not any(word in " ".join(train + heldout).lower() for word in (" nba ", " nfl ", "basketball", "baseball"))


def write_csv(tmp_path, text):
    path = tmp_path / "athletes.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name,sport\nA,baseball\n", "lacks the columns \\['athlete'\\]"),
        ("athlete,sport\nA,cricket\n", "unknown sports \\['cricket'\\]"),
        ("athlete,sport\nA,baseball\nA,baseball\n", "more than once: \\['A'\\]"),
        ("athlete,sport\n", "has no rows"),
        ("athlete,sport\n ,baseball\n", "empty athlete name"),
    ],
)
def test_bad_sports_csv(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        load_sports(write_csv(tmp_path, text))


def test_other_sports_csv_is_accepted(tmp_path):
    athletes = load_sports(write_csv(tmp_path, "athlete,sport,team\nA,baseball,X\nB,football,Y\n"))
    assert athletes.to_dict("list") == {"athlete": ["A", "B"], "sport": ["baseball", "football"]}


def good_record(case_id=1, true="French", new="English", **changes):
    record = {
        "case_id": case_id,
        "requested_rewrite": {"prompt": "The mother tongue of {} is", "subject": f"Person {case_id}",
                              "target_true": {"str": true}, "target_new": {"str": new}},
        "paraphrase_prompts": [f"Person {case_id} grew up speaking"],
        "neighborhood_prompts": ["The mother tongue of Someone Else is"],
    }
    record.update(changes)
    return record


def test_original_schema_without_mcq_options_gets_distractors():
    answers = ["French", "German", "Dutch", "Polish"]
    frame = records_to_frame([good_record(i, true, "Greek") for i, true in enumerate(answers)])
    for row in frame.itertuples():
        assert row.mcq_wrong_options[0] == "Greek"
        assert row.target_true not in row.mcq_wrong_options
        assert len(set(row.mcq_wrong_options)) == 3


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"case_id": 1}, "lacks the keys"),
        (good_record(requested_rewrite={"prompt": "The mother tongue of X is", "subject": "X",
                                        "target_true": {"str": "French"}, "target_new": {"str": "English"}}),
         "no '\\{\\}' placeholder"),
        (good_record(new="French"), "target_new equals target_true"),
        (good_record(requested_rewrite={"prompt": "{} is", "subject": "X"}), "requested_rewrite lacks"),
        (good_record(mcq_wrong_options=["German", "Dutch", "Greek"]), "starting with target_new"),
    ],
)
def test_bad_counterfact_records(record, message):
    with pytest.raises(ValueError, match=message):
        records_to_frame([record])


def test_bad_counterfact_sources(tmp_path):
    with pytest.raises(ValueError, match="Duplicate case_id"):
        records_to_frame([good_record(), good_record(true="Dutch")])
    with pytest.raises(ValueError, match="no records"):
        records_to_frame([])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_counterfact(tmp_path / "missing.json")
    path = tmp_path / "facts.json"
    path.write_text(json.dumps([good_record(mcq_wrong_options=["English", "Dutch", "Greek"])]))
    assert load_counterfact(path).prompt[0] == "The mother tongue of Person 1 is"


def test_general_text_bad_split():
    with pytest.raises(ValueError, match="Unknown split 'test'"):
        load_general_text("test")

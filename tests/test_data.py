"""Schema tests of the shipped data sets, and clear errors on bad data."""

import json

import pandas as pd
import pytest

from helpers.counterfact import known_facts, load_counterfact, records_to_frame
from helpers.finetune import retain_chunks
from helpers.general_text import load_general_text
from helpers.prompts import SPORTS
from helpers.sports import known_athletes, load_sports


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
        ("name,sport\nA,baseball\n", "athletes.csv lacks the columns \\['athlete'\\]"),
        ("athlete,sport\nA,cricket\n", "athletes.csv, line 2 \\(athlete 'A'\\): field 'sport' is 'cricket'"),
        ("athlete,sport\nA,baseball\nA,baseball\n", "line 3 \\(athlete 'A'\\) repeats field 'athlete' of line 2"),
        ("athlete,sport\nJohn Smith,baseball\njohn  SMITH,football\n", "line 3 \\(athlete 'john  SMITH'\\) repeats .* line 2"),
        ("athlete,sport\n", "athletes.csv has no rows"),
        ("", "athletes.csv is empty"),
        ("athlete,sport\n ,baseball\n", "line 2: field 'athlete' must be a non-empty string"),
    ],
)
def test_bad_sports_csv(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        load_sports(write_csv(tmp_path, text))


def test_sports_csv_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "athletes.csv"
    path.write_bytes("athlete,sport\nJosé,baseball\n".encode("latin-1"))
    with pytest.raises(ValueError, match="athletes.csv cannot be read as a UTF-8 CSV"):
        load_sports(path)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ({"athlete": ["A"], "sport": ["golf"]}, "data frame argument, row 0 \\(athlete 'A'\\): field 'sport' is 'golf'"),
        ({"athlete": ["A"]}, "data frame argument lacks the columns \\['sport'\\]"),
        ({"athlete": ["A", " a"], "sport": ["baseball", "football"]}, "row 1 \\(athlete 'a'\\) repeats field 'athlete' of row 0"),
        ({"athlete": [None], "sport": ["baseball"]}, "row 0: field 'athlete' must be a non-empty string, got None"),
    ],
)
def test_bad_athletes_data_frame(tiny_model, rows, message):
    with pytest.raises(ValueError, match=message):
        known_athletes(tiny_model, pd.DataFrame(rows))


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


def rewrite(**changes):
    return {"prompt": "The mother tongue of {} is", "subject": "X", "target_true": {"str": "French"},
            "target_new": {"str": "English"}, **changes}


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"case_id": 1}, "record 0 \\(case_id 1\\) lacks the keys"),
        (good_record(requested_rewrite=rewrite(prompt="The mother tongue of X is")), "field 'template' must hold exactly one '\\{\\}'"),
        (good_record(requested_rewrite=rewrite(prompt="{} and {} speak")), "field 'template' must hold exactly one '\\{\\}'"),
        (good_record(new="French"), "target_new equals target_true"),
        (good_record(requested_rewrite={"prompt": "{} is", "subject": "X"}), "requested_rewrite lacks"),
        (good_record(mcq_wrong_options=["German", "Dutch", "Greek"]), "starting with target_new"),
        (good_record(requested_rewrite=rewrite(target_true="French")), "field 'requested_rewrite.target_true' must be an object"),
        (good_record(requested_rewrite=rewrite(subject=7)), "record 0 \\(case_id 1\\): field 'subject' must be a non-empty string, got 7"),
        (good_record(true=" "), "field 'target_true' must be a non-empty string"),
        (good_record(paraphrase_prompts="X grew up speaking"), "field 'paraphrase_prompts' must be a list of strings, got str"),
        (good_record(case_id="1"), "field 'case_id' must be an integer"),
    ],
)
def test_bad_counterfact_records(record, message):
    with pytest.raises(ValueError, match=f"CounterFact records, .*{message}"):
        records_to_frame([record])


def test_bad_counterfact_sources(tmp_path):
    with pytest.raises(ValueError, match="repeats field 'case_id'"):
        records_to_frame([good_record(), good_record(true="Dutch")])
    with pytest.raises(ValueError, match="no records"):
        records_to_frame([])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_counterfact(tmp_path / "missing.json")
    path = tmp_path / "facts.json"
    path.write_text(json.dumps([good_record(mcq_wrong_options=["English", "Dutch", "Greek"])]))
    assert load_counterfact(path).prompt[0] == "The mother tongue of Person 1 is"
    path.write_text(json.dumps([good_record()])[:-5])
    with pytest.raises(ValueError, match="CounterFact file .*facts.json is not valid UTF-8 JSON"):
        load_counterfact(path)


def test_bad_counterfact_data_frame(tiny_model):
    facts = load_counterfact().head(3)
    facts.at[1, "paraphrase_prompts"] = "not a list"
    with pytest.raises(ValueError, match="data frame argument, row 1: field 'paraphrase_prompts' must be a list"):
        known_facts(tiny_model, facts)
    with pytest.raises(ValueError, match="data frame argument lacks the columns \\['template'\\]"):
        known_facts(tiny_model, load_counterfact().drop(columns="template"))


def test_relations_without_enough_answers_are_named_together_or_skipped(capsys):
    records = [good_record(i, true, "Greek") for i, true in enumerate(["French", "German", "Dutch"])]
    lonely = [good_record(10 + i, "Paris", "Rome") for i in range(2)]
    for i, record in enumerate(lonely):
        record["requested_rewrite"].update(relation_id=f"P{i}", subject=f"Town {i}")
    with pytest.raises(ValueError, match="relations \\['P0', 'P1'\\] have too few distinct answers .* \\(2 facts\\)"):
        records_to_frame(records + lonely)
    frame = records_to_frame(records + lonely, skip_unusable_relations=True)
    assert len(frame) == 3
    assert "skipped 2 facts that cannot form multiple-choice questions" in capsys.readouterr().out


def test_general_text_bad_split():
    with pytest.raises(ValueError, match="Unknown split 'test'"):
        load_general_text("test")


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ("One long article as a plain string.", "No general text: the general text argument must be a non-empty list"),
        ([], "No general text"),
        (["An article.", None], "the general text argument, text 1: field 'text' must be a non-empty string, got None"),
    ],
)
def test_bad_general_text(tiny_model, texts, message):
    with pytest.raises(ValueError, match=message):
        retain_chunks(tiny_model, texts, 16)

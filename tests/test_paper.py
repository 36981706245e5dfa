"""The paper's numbers load with their labels and line up with ours."""

import pandas as pd
import pytest

from helpers.paper import paper_numbers, side_by_side


def test_paper_numbers_are_labelled_probabilities():
    paper = paper_numbers()
    assert paper.value.between(0, 1).all() and paper.model.notna().all()
    flu = paper.set_index(["task", "localization", "metric"]).value
    assert flu[("sports_athlete_edit", "fact_lookup", "MCQ edit accuracy")] == 0.86


def test_side_by_side_keeps_the_paper_rows_and_fills_ours():
    ours = pd.DataFrame({"task": ["sports_athlete_edit"], "localization": ["fact_lookup"], "metric": ["MCQ edit accuracy"],
                         "mean": [0.6], "ci_low": [0.5], "ci_high": [0.7], "n": [3]})
    table = side_by_side(ours, "tiny").set_index(["task", "localization", "metric"])
    assert table.loc[("sports_athlete_edit", "fact_lookup", "MCQ edit accuracy"), "ours (tiny)"] == 0.6
    assert table["ours (tiny)"].isna().sum() == len(table) - 1


def test_a_file_without_the_columns_is_refused(tmp_path):
    path = tmp_path / "numbers.csv"
    path.write_text("task,value\nx,1\n")
    with pytest.raises(ValueError, match="lacks the columns"):
        paper_numbers(path)

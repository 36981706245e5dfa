import pytest

from helpers.prompts import (
    SPORTS_QA_INSTRUCTION,
    cloze_mcq_prompt,
    fill,
    lettered_mcq_prompt,
    qa_prompt,
    sports_fact_prompt,
    sports_system_qa_prompt,
)


def test_sports_fact_prompt_is_the_papers_one_shot_prompt():
    assert sports_fact_prompt("LeBron James") == (
        "Fact: Tiger Woods plays the sport of golf\nFact: LeBron James plays the sport of"
    )


def test_the_papers_sports_format_is_an_instruction_a_worked_question_and_the_question():
    prompt = sports_system_qa_prompt("LeBron James")
    assert prompt == (
        f"{SPORTS_QA_INSTRUCTION} Question: What sport does Tiger Woods play? Answer: golf\n"
        "Question: What sport does LeBron James play? Answer:"
    )
    assert "<start_of_turn>" not in prompt and SPORTS_QA_INSTRUCTION.endswith(".")  # plain text, no chat template


def test_multiple_choice_formats():
    options = ["golf", "baseball", "football"]
    lettered = lettered_mcq_prompt("What sport does X play?", options)
    assert lettered.endswith("A. golf\nB. baseball\nC. football\nAnswer:")
    cloze = cloze_mcq_prompt("What sport does X play?", options)
    assert "Choose one of: golf, baseball or football." in cloze and cloze.endswith("Answer:")
    assert qa_prompt("Q?") == "Question: Q?\nAnswer:"


def test_bad_inputs():
    with pytest.raises(ValueError, match="no '\\{\\}' placeholder"):
        fill("The capital of France is", "France")
    with pytest.raises(ValueError, match="distinct"):
        lettered_mcq_prompt("Q?", ["a", "a"])
    with pytest.raises(ValueError, match="2 to 6 options"):
        cloze_mcq_prompt("Q?", ["a"])

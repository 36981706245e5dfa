"""Every prompt format used in the book, in one place.

Four formats ask for the same fact in different ways (the paper's robustness test):

- the **fact prompt**: the one-shot completion the edits are trained on;
- the **question/answer paraphrase**: ``Question: ... Answer:``;
- the **lettered multiple choice** (the paper's MCQ): options ``A.``..``D.``, scored over
  the letters;
- the **cloze multiple choice**: the options listed in the question, the answer scored as
  the option's word (a format small models can answer when letters are beyond them).

A fifth, for sports only, is the paper's own evaluation format (:func:`sports_system_qa_prompt`):
the "Normal" forget, maintain and edit accuracies of its sports tables are measured in it, not
in the fact prompt the edits are trained on.
"""

from __future__ import annotations

from collections.abc import Sequence

SPORTS: tuple[str, ...] = ("basketball", "baseball", "football")
# The paper renormalizes over these four answers; golf is the target of Sports-Sport-Edit.
SPORT_ANSWERS: tuple[str, ...] = (*SPORTS, "golf")
LETTERS: tuple[str, ...] = ("A", "B", "C", "D", "E", "F")

SPORTS_FACT_TEMPLATE = "Fact: Tiger Woods plays the sport of golf\nFact: {athlete} plays the sport of"
SPORTS_QUESTION_TEMPLATE = "What sport does {athlete} play?"
SPORTS_SYSTEM_PROMPT = "You are a helpful sports expert. Answer with the name of one sport."
# The paper's evaluation format opens with an instruction of this content (in our words): a helpful
# assistant for questions about athletes, asked to be as helpful and as correct as it can.
SPORTS_QA_INSTRUCTION = "You are a helpful assistant who answers questions about athletes. Be as helpful and as accurate as you can."
SPORTS_QA_EXAMPLE = ("Tiger Woods", "golf")  # the worked example before the question, as in the fact prompt
# Completions whose next word is the sport for every sport, golf included ("is a professional"
# would be completed by the single token " golfer", not " golf").
SPORTS_COMPLETION_PARAPHRASES: tuple[str, ...] = (
    "{athlete} is known for playing professional",
    "The sport {athlete} is best known for is",
)


def sports_fact_prompt(athlete: str) -> str:
    """The paper's one-shot prompt: ``Fact: Tiger Woods plays ... golf\\nFact: {athlete} plays the sport of``."""
    return SPORTS_FACT_TEMPLATE.format(athlete=athlete)


def sports_question(athlete: str) -> str:
    """The question used by the paraphrase and the multiple-choice formats."""
    return SPORTS_QUESTION_TEMPLATE.format(athlete=athlete)


def paraphrase_prompts_for_sports(athlete: str) -> list[str]:
    """Other ways to ask an athlete's sport: the question/answer format, with and without a
    system prompt, and completions of sentences other than the fact prompt."""
    question = qa_prompt(sports_question(athlete))
    completions = [template.format(athlete=athlete) for template in SPORTS_COMPLETION_PARAPHRASES]
    return [question, f"{SPORTS_SYSTEM_PROMPT}\n{question}", *completions]


def sports_system_qa_prompt(athlete: str) -> str:
    """The paper's sports evaluation format: a system instruction, one worked question, the question.

    ``{instruction} Question: What sport does Tiger Woods play? Answer: golf\nQuestion: What
    sport does {athlete} play? Answer:``: question and answer on one line, the next word scored.
    This is the layout of the authors' evaluation with ``use_system_prompt=True`` and no further
    examples (their "Normal" format); the instruction has the same content as theirs, in our words.
    None of the paper's models (Gemma-7B, Gemma-2-9B, Llama-3-8B: base models) nor our embedded
    model is given a chat template, so the system prompt is rendered as plain text before the
    worked question, separated by a space, as the authors' code renders it for theirs.
    """
    example, sport = SPORTS_QA_EXAMPLE
    worked = f"Question: {sports_question(example)} Answer: {sport}"
    return f"{SPORTS_QA_INSTRUCTION} {worked}\nQuestion: {sports_question(athlete)} Answer:"


def fill(template: str, subject: str) -> str:
    """Fill a CounterFact template (``"The mother tongue of {} is"``) with its subject."""
    if "{}" not in template:
        raise ValueError(f"Prompt template {template!r} has no '{{}}' placeholder for the subject")
    return template.replace("{}", subject)


def completion_question(statement: str) -> str:
    """Turn a CounterFact completion (``"The mother tongue of X is"``) into a question."""
    return f'Which word completes the sentence "{statement} ..."?'


def qa_prompt(question: str) -> str:
    """``Question: {question}\\nAnswer:``; the answer is scored as the next word."""
    return f"Question: {question}\nAnswer:"


def lettered_mcq_prompt(question: str, options: Sequence[str]) -> str:
    """The paper's multiple choice: lettered options, the answer scored over the letters."""
    _check_options(options)
    lines = [f"{letter}. {option}" for letter, option in zip(LETTERS, options)]
    return f"Question: {question}\n" + "\n".join(lines) + "\nAnswer:"


def cloze_mcq_prompt(question: str, options: Sequence[str]) -> str:
    """Multiple choice with the options listed in the question, scored as the option words."""
    _check_options(options)
    listed = ", ".join(options[:-1]) + f" or {options[-1]}"
    return f"Question: {question} Choose one of: {listed}.\nAnswer:"


def _check_options(options: Sequence[str]) -> None:
    if not 2 <= len(options) <= len(LETTERS):
        raise ValueError(f"A multiple-choice question needs 2 to {len(LETTERS)} options, got {len(options)}")
    if len(set(options)) != len(options):
        raise ValueError(f"Multiple-choice options must be distinct, got {list(options)}")

"""MMLU accuracy through lm-eval: the paper's measure of general capability, for large models.

A 270M model answers MMLU at chance, so the book's default profile measures general capability
with the held-out general-text loss and a quiz of other facts (:mod:`helpers.evaluation`). The
``gpu`` profile adds MMLU for the paper's models. It needs lm-eval
(``pip install -r requirements-gpu.txt``) and the Hugging Face hub, which serves the questions.
"""

from __future__ import annotations

from helpers.models import LoadedModel


def mmlu_accuracy(model: LoadedModel, limit: int, *, num_fewshot: int = 5, batch_size: int = 8, seed: int = 0) -> float:
    """Mean MMLU accuracy of ``model`` on the first ``limit`` questions of each subject (lm-eval's ``mmlu`` group)."""
    if limit < 1:
        raise ValueError(f"limit must be a positive number of questions per subject, got {limit}")
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
    except ImportError as error:
        raise ImportError("MMLU is measured with lm-eval: pip install -r requirements-gpu.txt") from error
    harness_model = HFLM(pretrained=model.hf_model, tokenizer=model.tokenizer, batch_size=batch_size, device=str(model.device))
    output = simple_evaluate(
        model=harness_model, tasks=["mmlu"], num_fewshot=num_fewshot, limit=limit, log_samples=False,
        random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
    )
    return float(output["results"]["mmlu"]["acc,none"])

import numpy as np
import pytest
import torch

from helpers.contrast import contrast_batches, logit_diff, normalized_effect, subject_span

SUBJECTS = ["Michael Jordan", "LeBron James", "Tom Brady"]


def test_subject_span_finds_the_subject_tokens(gemma_tokenizer):
    ids, span = subject_span(gemma_tokenizer, "Fact: Michael Jordan plays the sport of", "Michael Jordan")
    assert gemma_tokenizer.decode(ids[span.start : span.stop]).strip() == "Michael Jordan"
    ids, span = subject_span(gemma_tokenizer, "Windows was developed by", "Windows")
    assert span.start == 1  # right after BOS
    with pytest.raises(ValueError, match="does not occur"):
        subject_span(gemma_tokenizer, "Fact: X plays", "Michael Jordan")


def test_corruption_changes_only_the_subject_and_is_seeded(tiny_model):
    prompts = [f"Fact: {s} plays the sport of" for s in SUBJECTS]
    batches = contrast_batches(tiny_model, prompts, SUBJECTS, ["basketball"] * 3, [["baseball", "golf"]] * 3, seed=0)
    again = contrast_batches(tiny_model, prompts, SUBJECTS, ["basketball"] * 3, [["baseball", "golf"]] * 3, seed=0)
    for batch, same in zip(batches, again):
        assert batch.clean.shape == batch.corrupt.shape
        assert torch.equal(batch.clean[~batch.subject], batch.corrupt[~batch.subject])
        assert (batch.clean[batch.subject] != batch.corrupt[batch.subject]).any()
        assert torch.equal(batch.corrupt, same.corrupt)
        assert len({row.shape[0] for row in batch.clean}) == 1
    assert sum(len(b) for b in batches) == 3


def test_rows_select_prompts_in_every_tensor(tiny_model):
    prompts = [f"Fact: {s} plays the sport of" for s in SUBJECTS]
    batch = contrast_batches(tiny_model, prompts, SUBJECTS, ["basketball"] * 3, [["baseball", "golf"]] * 3, seed=0)[0]
    first = batch.rows(slice(0, 1))
    assert len(first) == 1
    for name in ("clean", "corrupt", "subject", "answer", "foils"):
        assert torch.equal(getattr(first, name), getattr(batch, name)[:1])


def test_logit_diff_and_normalization():
    logits = torch.zeros(2, 3, 10)
    logits[:, -1, 4] = 5.0
    logits[:, -1, 7] = 1.0
    batch = type("B", (), {"answer": torch.tensor([4, 7]), "foils": torch.tensor([[7, 0], [4, 0]])})()
    torch.testing.assert_close(logit_diff(logits, batch), torch.tensor([4.5, -1.5]))
    np.testing.assert_allclose(normalized_effect(np.array([1.0, 3.0]), clean=3.0, corrupt=1.0), [0.0, 1.0])
    with pytest.raises(ValueError, match="changes nothing"):
        normalized_effect(1.0, clean=2.0, corrupt=2.0)


def test_bad_inputs(tiny_model):
    with pytest.raises(ValueError, match="No prompts"):
        contrast_batches(tiny_model, [], [], [], [], seed=0)
    with pytest.raises(ValueError, match="shares its first token"):
        contrast_batches(tiny_model, ["Fact: Tom Brady plays"], ["Tom Brady"], ["golf"], [["golf"]], seed=0)

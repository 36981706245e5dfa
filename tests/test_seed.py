import numpy as np
import pytest
import torch

from helpers.seed import seed_everything


def test_same_seed_same_draws():
    rng = seed_everything(7)
    first = (torch.rand(3), np.random.rand(3), rng.random(3))
    rng = seed_everything(7)
    second = (torch.rand(3), np.random.rand(3), rng.random(3))
    assert torch.equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    np.testing.assert_array_equal(first[2], second[2])


def test_bad_seed_is_refused():
    with pytest.raises(ValueError, match="non-negative integer"):
        seed_everything(-1)

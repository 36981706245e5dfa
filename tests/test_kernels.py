import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import kernels
from helpers.kernels import LINEAR_ENV, OneDNNLinear, linear, linear_backend, runs_on_onednn, use_onednn, weights_frozen

pytestmark = pytest.mark.skipif(linear_backend() != "onednn", reason="this PyTorch has no oneDNN")


@pytest.mark.parametrize("shape", [(7, 64), (3, 5, 64)])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("trained_weight", [False, True])
def test_linear_and_its_gradients_equal_torch(shape, with_bias, trained_weight):
    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=True)
    weight = torch.randn(48, 64, requires_grad=trained_weight)
    bias = torch.randn(48, requires_grad=trained_weight) if with_bias else None
    grad = torch.randn(*shape[:-1], 48)
    inputs = [t for t in (x, weight, bias) if t is not None and t.requires_grad]

    ours = linear(x, weight, bias)
    theirs = F.linear(x, weight, bias)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    for mine, reference in zip(torch.autograd.grad(ours, inputs, grad), torch.autograd.grad(theirs, inputs, grad)):
        torch.testing.assert_close(mine, reference, rtol=1e-5, atol=1e-4)


def test_only_float32_on_a_cpu_outside_autocast_takes_onednn():
    x, weight = torch.randn(2, 8), torch.randn(4, 8)
    assert runs_on_onednn(x, weight)
    assert not runs_on_onednn(x.bfloat16(), weight.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not runs_on_onednn(x, weight)
        assert linear(x, weight).dtype == torch.bfloat16  # autocast's own F.linear


def test_weights_frozen_spares_the_weight_gradient_and_restores_the_flags(monkeypatch):
    layer = OneDNNLinear(8, 4)
    layer.bias.requires_grad_(False)  # a mixed set of flags comes back as it was
    x = torch.randn(3, 8, requires_grad=True)
    products = []
    monkeypatch.setattr(kernels, "_product", lambda a, b: products.append(b.shape) or a @ b.T)

    def products_of_a_backward_to_the_input() -> int:
        products.clear()
        torch.autograd.grad(layer(x).sum(), x)
        return len(products) - 1  # less the forward's

    assert products_of_a_backward_to_the_input() == 2  # the input's gradient and, for nothing, the weight's
    with weights_frozen(layer):
        assert products_of_a_backward_to_the_input() == 1
    assert (layer.weight.requires_grad, layer.bias.requires_grad) == (True, False)
    with pytest.raises(RuntimeError), weights_frozen(layer):
        raise RuntimeError
    assert (layer.weight.requires_grad, layer.bias.requires_grad) == (True, False)


def test_use_onednn_swaps_plain_linears_only(monkeypatch):
    class Custom(nn.Linear):
        pass

    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), Custom(8, 4), nn.Sequential(nn.Linear(4, 2, bias=False)))
    x = torch.randn(3, 8)
    before = model(x)
    assert use_onednn(model) == 2
    assert [type(m) for m in model.modules() if isinstance(m, nn.Linear)] == [OneDNNLinear, Custom, OneDNNLinear]
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-6)
    assert use_onednn(model) == 0  # already swapped

    monkeypatch.setenv(LINEAR_ENV, "torch")
    assert use_onednn(nn.Linear(2, 2)) == 0


def test_unknown_backend_is_named(monkeypatch):
    monkeypatch.setenv(LINEAR_ENV, "blas")
    with pytest.raises(ValueError, match="MECHUNLEARN_LINEAR='blas' is not one of"):
        linear_backend()


def test_the_embedded_model_runs_on_onednn(embedded_model):
    linears = [m for m in embedded_model.hf_model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is OneDNNLinear for m in linears)

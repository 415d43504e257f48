"""The GPU path, traced on a CPU: what `train.py --compile true` and a compiled sampler hand to
torch.compile must be one graph each, with no break.

`torch.compile(fn, fullgraph=True, backend="eager")` runs TorchDynamo's tracing exactly as a GPU run
does, then executes the captured graph eagerly, so no compiler is needed; `fullgraph=True` turns any
graph break (a `.item()`, a data-dependent branch, an untraceable call) into an error. Each test
also checks the compiled call returns what the plain call returns. `tiny` sizes; a few seconds each.
"""
import pytest
import torch

import diffusion
from autoencoder import MDSA
from config import get_config
from model import STDiT, latent_shape


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test traces from scratch: a cached graph from another test must not hide a break."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def traced(fn):
    return torch.compile(fn, fullgraph=True, backend="eager")


def test_stdit_training_loss_is_one_graph():
    """The STDiT's loss under the default mixture of noise levels (equal, independent, one clean)."""
    cfg = get_config("tiny")
    dit, process = STDiT(cfg).train(), diffusion.from_config(cfg)
    assert process.mix[1] > 0 and process.mix[2] > 0, "the default mixture draws per-modality levels"
    x0 = torch.randn(2, *latent_shape(cfg))

    def loss(seed):
        torch.manual_seed(seed)                  # the same levels, noise and label dropout both times
        return process.loss(dit, x0)

    plain = loss(0)
    compiled = traced(lambda: process.loss(dit, x0))
    torch.manual_seed(0)
    out = compiled()
    out.backward()                               # the backward graph traces too
    assert torch.allclose(out, plain, rtol=1e-5, atol=1e-6)


def test_mdsa_loss_is_one_graph():
    cfg = get_config("tiny")
    ae = MDSA(cfg).train()
    video = torch.rand(2, 3, cfg.frames, cfg.image_size, cfg.image_size) * 2 - 1
    audio = torch.rand(2, 1, cfg.frames, cfg.n_mels, cfg.mel_width) * 2 - 1
    torch.manual_seed(0)
    plain = ae.loss(video, audio)["loss"]
    torch.manual_seed(0)
    out = traced(lambda: ae.loss(video, audio)["loss"])()
    out.backward()
    assert torch.allclose(out, plain, rtol=1e-5, atol=1e-6)


def test_stdit_sampling_forward_is_one_graph():
    """The forward as the samplers call it: eval mode, a `B×2` level per modality (video, audio)."""
    cfg = get_config("tiny")
    dit = STDiT(cfg).eval()
    x = torch.randn(3, *latent_shape(cfg))
    t = torch.tensor([[500, 500], [500, 999], [999, 500]])
    with torch.no_grad():
        plain = dit(x, t)
        out = traced(dit)(x, t)
    assert torch.allclose(out, plain, rtol=1e-5, atol=1e-5)


def test_a_graph_break_fails_the_trace():
    """The check can fail: a Python branch on a tensor's value (the kind of break once found only on
    a GPU) cannot be traced into one graph and is refused."""
    def with_break(x):
        if x.sum() > 0:                          # data-dependent control flow: Dynamo must break here
            return x
        return -x

    with pytest.raises(Exception, match="(?i)data-dependent"):
        traced(with_break)(torch.randn(4))

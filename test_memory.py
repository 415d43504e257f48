"""Activation checkpointing (`grad_checkpoint`, train.py) and the memory count of memory.py behind
`bench.py --memory true`. CPU only, a few seconds.

Checkpointing must change memory and nothing else: a seeded training step gives bit-identical
losses and gradients with it and without (torch.equal; the recomputed forward runs the same kernels
on the same inputs, so no tolerance is needed), random draws inside a recomputed block replay, the
global RNG ends where it would have, and the bytes autograd keeps for backward shrink. The memory
rows force the fused attention kernel through `attention.fused_only()` and measure each row in a
fresh process.
"""
import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attention
import diffusion
import model as model_module
from autoencoder import MDSA
from config import get_config
from conftest import randomized
from memory import SavedForBackward, measured_row, memory_row
from model import STDiT, latent_shape

SMALL_DIT = dict(dit_width=32, dit_depth=4, dit_heads=2)
SMALL_AE = dict(ae_channels=16, ae_heads=2, ae_enc_blocks=2, ae_dec_blocks=2)


def dit_case(**overrides):
    """(STDiT, loss_fn) at a small width; the loss draws the training mixture's noise levels and noise,
    and, with num_classes, label dropout."""
    cfg = get_config("tiny", **SMALL_DIT, **overrides)
    torch.manual_seed(0)
    dit, process = randomized(STDiT(cfg)).train(), diffusion.from_config(cfg)
    z = torch.randn(3, *latent_shape(cfg))
    y = torch.tensor([0, 1, 2]) if cfg.num_classes else None
    return dit, lambda: process.loss(dit, z, y)


def ae_case(**overrides):
    """(MDSA, loss_fn) at a small width; the loss draws cross-modal dropout and the posterior samples."""
    cfg = get_config("tiny", **SMALL_AE, **overrides)
    torch.manual_seed(0)
    ae = randomized(MDSA(cfg)).train()
    video = torch.rand(2, 3, cfg.frames, cfg.image_size, cfg.image_size) * 2 - 1
    audio = torch.rand(2, 1, cfg.frames, cfg.n_mels, cfg.mel_width) * 2 - 1
    return ae, lambda: ae.loss(video, audio)["loss"]


def step(model, loss_fn, checkpointed, bf16=False, seed=1):
    """One seeded forward + backward → (loss, gradients by name, the next draw of the global RNG)."""
    model.grad_checkpoint = checkpointed
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = loss_fn()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return loss.detach(), grads, torch.rand(4)


def assert_same_step(model, loss_fn, bf16=False):
    loss, grads, after = step(model, loss_fn, False, bf16)
    loss_ck, grads_ck, after_ck = step(model, loss_fn, True, bf16)
    assert torch.equal(loss, loss_ck)
    assert grads.keys() == grads_ck.keys() and all(torch.equal(grads[k], grads_ck[k]) for k in grads)
    assert any(g.abs().sum() > 0 for g in grads.values())
    assert torch.equal(after, after_ck)              # recomputation leaves the global RNG where it was


@pytest.mark.parametrize("bf16", [False, True])
def test_stdit_step_is_identical_with_checkpointing(bf16):
    dit, loss_fn = dit_case(num_classes=3, class_dropout=0.5)   # label dropout draws in every step
    assert_same_step(dit, loss_fn, bf16)


@pytest.mark.parametrize("bf16", [False, True])
def test_mdsa_step_is_identical_with_checkpointing(bf16):
    ae, loss_fn = ae_case(xmodal_dropout=0.5)                   # cross-modal dropout draws in every step
    assert_same_step(ae, loss_fn, bf16)


def with_dropout_in_every_block(model):
    """Append a Dropout(0.5) to each block's MLP: random draws INSIDE the checkpointed region, which
    the recomputation must replay exactly (non-reentrant checkpoint restores the RNG state)."""
    blocks = model.blocks if isinstance(model, STDiT) else [*model.enc_blocks, *model.dec_blocks]
    for block in blocks:
        for mlp in ([block.mlp] if isinstance(model, STDiT) else [block.mlp_v, block.mlp_a]):
            mlp.append(nn.Dropout(0.5))
    return model


@pytest.mark.parametrize("case", [dit_case, ae_case])
def test_random_draws_inside_a_block_replay_on_recomputation(case):
    model, loss_fn = case()
    with_dropout_in_every_block(model)
    assert_same_step(model, loss_fn)
    # the dropout draws matter: another seed gives other gradients
    assert not torch.equal(step(model, loss_fn, True, seed=1)[0], step(model, loss_fn, True, seed=2)[0])


def saved_bytes(model, loss_fn, blocks, checkpointed):
    model.grad_checkpoint = checkpointed
    torch.manual_seed(1)
    with SavedForBackward(model, blocks) as saved:
        loss = loss_fn()
    loss.backward()                                  # the graph runs: the count did not break it
    return saved.bytes()


def test_stdit_checkpointing_keeps_only_block_inputs():
    """STDiT, 4 identical blocks: without checkpointing each saves about the same bytes (the first
    also the conditioning the others share); with it the blocks' share is gone, and all that stays
    of them (their inputs) is less than one block's worth."""
    dit, loss_fn = dit_case()
    full, ckpt = (saved_bytes(dit, loss_fn, dit.blocks, c) for c in (False, True))
    assert 0.99 * 4 * full["max_block"] < full["blocks"] <= 4 * full["max_block"]
    assert full["weight_copies"] == 0 and ckpt["blocks"] == 0
    assert ckpt["total"] < full["total"] - full["blocks"] + full["max_block"]
    assert full["total"] / ckpt["total"] > 10        # 4.45 MB → 0.31 MB: ×14.4 at this size


def test_mdsa_checkpointing_lowers_saved_bytes_by_the_blocks_share():
    ae, loss_fn = ae_case()
    blocks = [*ae.enc_blocks, *ae.dec_blocks]
    full, ckpt = (saved_bytes(ae, loss_fn, blocks, c) for c in (False, True))
    assert full["blocks"] > 0 and ckpt["blocks"] == 0
    # the blocks' bytes leave, their inputs (two token grids per block) stay: 69.4 MB → 47.8 MB here;
    # the rest is the per-frame convolutions of the stem and head, which are not checkpointed
    assert full["total"] - full["blocks"] <= ckpt["total"] < full["total"] - full["blocks"] / 2


def test_bf16_weight_copies_are_counted_apart():
    dit, loss_fn = dit_case()
    dit.grad_checkpoint = False
    with SavedForBackward(dit, dit.blocks) as saved, torch.autocast("cpu", dtype=torch.bfloat16):
        loss_fn()
    linear_weights = sum(m.weight.numel() for m in dit.blocks.modules() if isinstance(m, nn.Linear))
    assert saved.bytes()["weight_copies"] >= 2 * linear_weights   # every block Linear's bf16 copy, at least


def test_no_recomputation_outside_training(monkeypatch):
    """Evaluation and no-grad calls (sampling, encoding latents) never checkpoint, even with the flag."""
    def refuse(*args, **kwargs):
        raise AssertionError("checkpoint() called outside a training step")
    monkeypatch.setattr(model_module, "checkpoint", refuse)
    dit, _ = dit_case()
    dit.grad_checkpoint = True
    x, t = torch.randn(2, *latent_shape(dit.cfg)), torch.tensor([3, 700])
    with torch.no_grad():
        dit(x, t)                                    # train mode, no grad
    dit.eval()
    dit(x, t).sum().backward()                       # eval mode, grad (reconstruction guidance)


def test_fused_only_switches_sdpa_to_the_fused_kernel_and_back():
    """bf16 on a CPU: sdpa writes the product out, except inside fused_only(), where it is exactly
    F.scaled_dot_product_attention; the switch ends with the block, also when it raises."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 16, 8, generator=gen).bfloat16() for _ in range(3))
    fused = F.scaled_dot_product_attention(q, k, v)
    written_out = attention.sdpa(q, k, v)
    assert not torch.equal(written_out, fused)
    with attention.fused_only():
        assert torch.equal(attention.sdpa(q, k, v), fused)
        assert torch.equal(model_module.sdpa(q, k, v), fused)    # the STDiT's import is the same function
    with pytest.raises(RuntimeError), attention.fused_only():
        raise RuntimeError
    assert torch.equal(attention.sdpa(q, k, v), written_out)


def test_fused_kernel_saves_less_than_the_written_out_one():
    """The switch reaches every attention of the STDiT: a bf16 step saves less for backward inside
    fused_only() (no n×n weights) and gives the same loss within bf16 rounding."""
    dit, loss_fn = dit_case()
    dit.grad_checkpoint = False
    counts, losses = {}, {}
    for kernel, switch in (("as_run", contextlib.nullcontext), ("fused", attention.fused_only)):
        torch.manual_seed(1)
        with switch(), SavedForBackward(dit, dit.blocks) as saved, torch.autocast("cpu", dtype=torch.bfloat16):
            losses[kernel] = loss_fn().float()
        counts[kernel] = saved.bytes()["total"]
    assert counts["fused"] < counts["as_run"]
    assert losses["fused"].item() == pytest.approx(losses["as_run"].item(), rel=0.02)


def test_a_memory_row_in_a_fresh_process_counts_what_this_one_does(monkeypatch):
    """measured_row runs memory_row in a new Python process (importing memory.py, not a script);
    the saved-for-backward count is deterministic, so it matches this process's to the byte."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")       # the new process runs one thread, as the tests do
    args = ("dit", "tiny", 1, True, "cpu", "fp32", "fused")
    there, here = measured_row(args, torch.device("cpu")), memory_row(*args)
    assert there["total"] == here["total"] > 0 and there["grads"] == here["grads"] > 0

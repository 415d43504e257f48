"""Activation checkpointing (`grad_checkpoint`, train.py) and the memory count behind bench.py's
memory table. CPU only, a few seconds.

Checkpointing must change memory and nothing else: a seeded training step gives bit-identical
losses and gradients with it and without (torch.equal; the recomputed forward runs the same kernels
on the same inputs, so no tolerance is needed), random draws inside a recomputed block replay, the
global RNG ends where it would have, and the bytes autograd keeps for backward shrink.
"""
import pytest
import torch
from torch import nn

import diffusion
import model as model_module
from autoencoder import MDSA
from bench import SavedForBackward
from config import get_config
from model import STDiT, latent_shape

SMALL_DIT = dict(dit_width=32, dit_depth=4, dit_heads=2)
SMALL_AE = dict(ae_channels=16, ae_heads=2, ae_enc_blocks=2, ae_dec_blocks=2)


def randomized(model, seed=0):
    """Random weights in the zero-initialised layers too (adaLN-Zero gates, zero output projections),
    so every path carries a gradient that a wrong recomputation would change."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.train()


def dit_case(**overrides):
    """(STDiT, loss_fn) at a small width; the loss draws the training mixture's noise levels and noise,
    and, with num_classes, label dropout."""
    cfg = get_config("tiny", **SMALL_DIT, **overrides)
    torch.manual_seed(0)
    dit, process = randomized(STDiT(cfg)), diffusion.from_config(cfg)
    z = torch.randn(3, *latent_shape(cfg))
    y = torch.tensor([0, 1, 2]) if cfg.num_classes else None
    return dit, lambda: process.loss(dit, z, y)


def ae_case(**overrides):
    """(MDSA, loss_fn) at a small width; the loss draws cross-modal dropout and the posterior samples."""
    cfg = get_config("tiny", **SMALL_AE, **overrides)
    torch.manual_seed(0)
    ae = randomized(MDSA(cfg))
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

"""
The first tests to read: the sizes of ProAV-DiT (config, §6), the stacked latent and STDiT (§4), and
the forward process and its loss (§5); test_diffusion.py goes further into the forward processes,
test_sampling.py into the samplers. CPU only, the whole file in well under a minute.

Every test checks a number or an exact equality that a plausible bug would break: a wrong
reshape breaks the round trip, a missing zero-init breaks the zero output, a wrong v-conversion
breaks the oracle's zero loss, and a denoiser that cannot learn fails the overfitting test.
"""
import pytest
import torch

from config import PRESETS, Config, get_config
import diffusion
from conftest import randomized
from diffusion import DDPM, respaced_timesteps
from model import PLANE_NAMES, STDiT, latent_shape, stack_planes, unprojected_stdit, unstack_planes


# A small denoiser: the tiny latent (c=4, six 8×8 planes), fewer channels.
SMALL = dict(dit_width=32, dit_depth=1, dit_heads=2, objective="ddpm", shortcut_steps=0)   # integer timesteps below


# ---- config (§6) ----

def test_presets_share_one_plane_size():
    tiny, paper = get_config("tiny"), get_config("paper")
    assert set(PRESETS) >= {"tiny", "paper"}
    assert (tiny.latent_size, tiny.latent_frames, tiny.hop, tiny.clip_samples) == (8, 8, 50, 25600)
    assert (paper.latent_size, paper.latent_frames, paper.hop) == (16, 16, 25)
    assert (paper.dit_depth, paper.dit_width, paper.dit_heads) == (28, 1152, 16)
    # §6: tokens per clip at patch 1, projected vs the full 3D latent of both modalities
    tokens = lambda shape: shape[1] * shape[2] * shape[3] // paper.patch ** 2
    assert tokens(latent_shape(paper)) == 1536 and tokens(latent_shape(paper, projected=False)) == 8192


def test_checkpoint_configs_keep_their_process():
    # tiny trains rectified flow at shift 2, paper DDPM as the paper does; a config saved before
    # rectified flow existed was DDPM's
    assert (get_config("tiny").objective, get_config("tiny").flow_shift, get_config("paper").objective) == \
        ("flow", 2.0, "ddpm")
    old = get_config("tiny").to_dict()
    del old["objective"], old["flow_shift"], old["shortcut_steps"]   # none of them existed then
    assert (Config.from_dict(old).objective, Config.from_dict(old).flow_shift) == ("ddpm", 1.0)


def test_mismatched_preset_names_the_sizes():
    with pytest.raises(ValueError) as err:
        get_config("tiny", image_size=64)                             # video h = 64/4 = 16, but T' = 8
    message = str(err.value)
    assert "64/4=16" in message and "T'=T/d_t=16/2=8" in message


# ---- the stacked latent (§4) ----

def test_planes_round_trip_exactly():
    planes = tuple(torch.randn(2, 4, 8, 8) for _ in PLANE_NAMES)
    z = stack_planes(planes)
    assert z.shape == (2, 4, 6, 8, 8)
    assert torch.equal(z[:, :, PLANE_NAMES.index("a_th")], planes[4])  # frame i is plane i
    back = unstack_planes(z)
    assert len(back) == 6 and all(torch.equal(a, b) for a, b in zip(back, planes))
    with pytest.raises(ValueError, match="v_th"):
        stack_planes(planes[:1] + (torch.randn(2, 4, 8, 4),) + planes[2:])


# ---- STDiT (§4) ----

@pytest.mark.parametrize("num_classes,patch", [(0, 1), (3, 1), (3, 2)])
def test_stdit_shape_tiny(num_classes, patch):
    cfg = get_config("tiny", num_classes=num_classes, patch=patch)
    model = randomized(STDiT(cfg))
    x, t = torch.randn(2, *latent_shape(cfg)), torch.tensor([0, cfg.diffusion_steps - 1])
    y = torch.tensor([0, 2]) if num_classes else None
    out = model(x, t, y)
    assert out.shape == x.shape == (2, 4, 6, 8, 8) and torch.isfinite(out).all()
    assert model.null_label == (num_classes if num_classes else None)
    with pytest.raises(ValueError, match="c×P×L×L"):
        model(torch.randn(2, 4, 5, 8, 8), t, y)


def test_unpatchify_puts_each_token_at_its_patch():
    cfg = get_config("tiny", patch=2, **SMALL)
    model, grid, p = STDiT(cfg), cfg.latent_size // 2, 2
    # token (plane i, patch j) carries the value 100·i + j in all its p·p·c outputs
    ids = (100 * torch.arange(6)[:, None] + torch.arange(grid * grid)[None]).float()
    out = model.unpatchify(ids[None, :, :, None].expand(1, 6, grid * grid, p * p * cfg.latent_channels))
    rows = torch.arange(cfg.latent_size) // p                         # pixel row i lies in patch row i//p
    expected = 100 * torch.arange(6)[:, None, None] + rows[None, :, None] * grid + rows[None, None, :]
    assert torch.equal(out[0, 0], expected.float()) and torch.equal(out[0, 3], out[0, 0])


def test_fresh_stdit_outputs_exactly_zero():
    cfg = get_config("tiny", num_classes=3)
    model = STDiT(cfg).eval()
    out = model(torch.randn(2, *latent_shape(cfg)), torch.tensor([3, 900]), torch.tensor([1, 2]))
    assert torch.equal(out, torch.zeros_like(out))                    # adaLN-Zero + zero output layer
    assert randomized(model)(torch.randn(2, *latent_shape(cfg)), torch.tensor([3, 900])).abs().max() > 0


def test_label_dropout_drops_to_null_in_the_loss():
    cfg = get_config("tiny", num_classes=3, class_dropout=1.0, **SMALL)
    model = randomized(STDiT(cfg))
    x, t, y = torch.randn(2, *latent_shape(cfg)), torch.tensor([10, 500]), torch.tensor([0, 1])
    null = torch.full_like(y, model.null_label)
    assert not torch.allclose(model(x, t, y), model(x, t, null))      # the label matters
    process = diffusion.from_config(cfg)
    assert torch.equal(process.drop_labels(y), null)                  # p=1: every label dropped
    assert process.drop_labels(None) is None
    assert torch.equal(diffusion.from_config(get_config("tiny", num_classes=3, class_dropout=0.0)).drop_labels(y), y)


def test_stdit_knows_which_plane_is_which():
    # Attention alone is blind to frame order; the learned per-plane embedding breaks that symmetry,
    # so swapping video and audio planes must not just swap the prediction.
    cfg = get_config("tiny", **SMALL)
    model = randomized(STDiT(cfg))
    x, t = torch.randn(1, *latent_shape(cfg)), torch.tensor([300])
    swap = [3, 4, 5, 0, 1, 2]
    assert not torch.allclose(model(x[:, :, swap], t), model(x, t)[:, :, swap], atol=1e-4)
    with torch.no_grad():
        model.frame_embed.zero_()                                     # without it: exactly equivariant
    torch.testing.assert_close(model(x[:, :, swap], t), model(x, t)[:, :, swap], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cross_plane", ["position", "row"])
def test_cross_plane_attention_groups(cross_plane):
    # Only the "temporal" step open (gates of the spatial step and the MLP at 0, its own at 1): a
    # change to one token of plane 0 at (row 1, col 2) must reach the other planes at that position
    # only ("position"), or anywhere in row 1 but never another row ("row", where same-instant rows
    # of video and audio meet whole).
    from model import STDiTBlock
    torch.manual_seed(0)
    block = STDiTBlock(32, 2, 4.0, cross_plane, grid=4)
    with torch.no_grad():
        block.modulation[-1].weight.zero_()
        block.modulation[-1].bias.zero_()
        block.modulation[-1].bias[5 * 32:6 * 32] = 1.0               # gate_t: shift, scale, gate ×3
    x, c = torch.randn(1, 6, 16, 32), torch.randn(1, 32)
    y = x.clone()
    y[0, 0, 1 * 4 + 2] += torch.randn(32)                            # not a constant: LayerNorm removes those
    moved = (block(y, c) - block(x, c)).abs().amax(-1)[0].reshape(6, 4, 4) > 1e-6   # plane × row × col
    assert moved[1:, 1, 2].all()                                     # the other planes, same position
    assert not moved[:, [0, 2, 3]].any()                             # no other row, in either mode
    assert moved[1:, 1, [0, 1, 3]].any() == (cross_plane == "row")   # rest of the row: "row" only


def test_paper_stdit_on_meta_device():
    cfg = get_config("paper", num_classes=9)
    with torch.device("meta"):                                        # shapes only, no allocation
        model = STDiT(cfg)
        x = torch.empty(2, *latent_shape(cfg))
        out = model(x, torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    assert out.shape == (2, 4, 6, 16, 16) and out.is_meta
    assert sum(p.numel() for p in model.parameters()) > 5e8           # XL-sized


@pytest.mark.parametrize("preset", ["tiny", "paper"])
def test_unprojected_stdit_shapes(preset):
    cfg = get_config(preset)
    device = torch.device("meta") if preset == "paper" else torch.device("cpu")
    with device:
        model = unprojected_stdit(cfg)
        x = torch.randn(1, *latent_shape(cfg, projected=False))
        out = model(x, torch.zeros(1, dtype=torch.long))
    t_prime, size = cfg.latent_frames, cfg.latent_size
    assert x.shape == (1, cfg.latent_channels, 2 * t_prime, size, size) and out.shape == x.shape
    assert model.frame_embed.shape[0] == 2 * t_prime


# ---- the forward process and its loss (§5) ----

def test_q_sample_ends():
    process = DDPM(1000, "linear")
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(8, 4, 6, 8, 8, generator=gen), torch.randn(8, 4, 6, 8, 8, generator=gen)
    start = process.q_sample(x0, torch.zeros(8, dtype=torch.long), noise)
    assert (start - x0).abs().max() < 0.02 * noise.abs().max()        # √(1−ᾱ_0) = √1e-4 = 0.01
    end = process.q_sample(x0, torch.full((8,), 999), noise)
    assert abs(end.std().item() - 1.0) < 0.03
    assert abs(torch.corrcoef(torch.stack([end.flatten(), x0.flatten()]))[0, 1].item()) < 0.03
    cosine = DDPM(1000, "cosine")
    assert cosine.betas.max() <= 0.999 and cosine.alphas_cumprod[-1] < 1e-4


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_v_prediction_targets_and_conversion(schedule):
    # An oracle that knows x0 and ε: its v̂ gives zero v-loss, and predict turns it into ε exactly
    # (ε = √(1−ᾱ)·x_t + √ᾱ·v), so every sampler is shared with ε-prediction.
    process = DDPM(1000, schedule, prediction="v")
    x0, noise = torch.randn(4, 4, 6, 8, 8, dtype=torch.float64), torch.randn(4, 4, 6, 8, 8, dtype=torch.float64)
    t = torch.tensor([0, 250, 700, 999])
    ab = process.alphas_cumprod[t].reshape(-1, 1, 1, 1, 1)
    v = ab.sqrt() * noise - (1 - ab).sqrt() * x0

    def oracle(x_t, t_, y=None):
        return v

    assert process.loss(oracle, x0, t=t, noise=noise).item() < 1e-20
    x_t = process.q_sample(x0, t, noise)
    torch.testing.assert_close(process.predict(oracle, x_t, t), noise, atol=1e-9, rtol=0)
    with pytest.raises(ValueError, match="prediction"):
        DDPM(1000, schedule, prediction="x0")


def test_respaced_grid():
    assert respaced_timesteps(10, 1000).tolist() == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    assert respaced_timesteps(1000, 1000).tolist() == list(range(1000))
    with pytest.raises(ValueError):
        respaced_timesteps(1001, 1000)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_classifier_free_guidance(prediction):
    cfg = get_config("tiny", num_classes=3, prediction=prediction, **SMALL)
    model, process = randomized(STDiT(cfg)), diffusion.from_config(cfg)
    x, t, y = torch.randn(2, *latent_shape(cfg)), torch.tensor([50, 700]), torch.tensor([0, 2])
    as_eps = lambda out: process.predict(lambda *_: out, x, t)  # noqa: E731 (v̂ → ε̂; ε̂ stays)
    eps_c, eps_u = as_eps(model(x, t, y)), as_eps(model(x, t, torch.full_like(y, model.null_label)))
    assert torch.equal(process.predict(model, x, t, y, cfg_scale=1.0), eps_c)
    torch.testing.assert_close(process.predict(model, x, t, y, cfg_scale=4.0),
                               eps_u + 4.0 * (eps_c - eps_u), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(process.predict(model, x, t, y, cfg_scale=0.0), eps_u,
                               rtol=1e-4, atol=1e-5)
    # and at scale 1 a sampler runs the conditional model: test_sampling.py


def test_tiny_stdit_overfits_one_batch():
    torch.manual_seed(0)
    cfg = get_config("tiny", num_classes=3, dit_width=64, dit_depth=2, dit_heads=4, objective="ddpm", shortcut_steps=0)
    model, process = STDiT(cfg), diffusion.from_config(cfg)
    gen = torch.Generator().manual_seed(6)
    x0 = torch.randn(2, *latent_shape(cfg), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    t, y = torch.tensor([150, 600]), torch.tensor([0, 1])
    model.eval()                                                      # fixed batch: no label dropout
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    first = process.loss(model, x0, y, t=t, noise=noise).item()
    for _ in range(200):
        loss = process.loss(model, x0, y, t=t, noise=noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert first > 0.5                                                # a zero prediction of unit noise
    assert loss.item() < first / 5, f"loss fell only from {first:.3f} to {loss.item():.3f}"

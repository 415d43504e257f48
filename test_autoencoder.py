"""Tests of attention.py and autoencoder.py (MDSA, PAPER.md §3). CPU, well under a minute."""
import pytest
import torch

from attention import BiBlockCrossAttn, GCMAttn, MTSelfAttn, SpatialSelfAttention, attention, sdpa
from autoencoder import MDSA, AxisPool, ResBlock2d, psnr
from config import Config, get_config


def streams(B=2, T=8, Nv=16, Na=12, D=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, Nv, D, generator=g), torch.randn(B, T, Na, D, generator=g)


def randomise(module):
    """Give every parameter (zero-initialised gates included) a random value."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
    return module


# ---------------------------------------------------------------- attention.py
def test_attention_primitive_matches_explicit_softmax():
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8)
    out = attention(q, k, v, heads=2)
    qh, kh, vh = (t.unflatten(-1, (2, 4)).transpose(-2, -3) for t in (q, k, v))   # ...×H×N×d
    ref = ((qh @ kh.transpose(-1, -2)) / 2.0).softmax(-1) @ vh                     # √d = 2
    assert out.shape == (2, 3, 5, 8)
    torch.testing.assert_close(out, ref.transpose(-2, -3).flatten(-2), atol=1e-5, rtol=1e-5)


def test_sdpa_bf16_cpu_path_matches_fused_fp32():
    # bf16 on CPU takes the written-out product (faster there); it must agree with the fused fp32
    # kernel to bf16's precision, including the 1/√d scale.
    q, k, v = torch.randn(3, 2, 6, 16), torch.randn(3, 2, 9, 16), torch.randn(3, 2, 9, 16)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    got = sdpa(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref, atol=3e-2, rtol=3e-2)


def test_attention_module_shapes():
    video, audio = streams()
    assert SpatialSelfAttention(32, 4)(video).shape == video.shape
    assert MTSelfAttn(32, 4, (1, 2, 4))(video).shape == video.shape
    for mod in (GCMAttn(32, 4, group=2), BiBlockCrossAttn(32, 4)):
        dv, da = mod(video, audio)
        assert dv.shape == video.shape and da.shape == audio.shape
    with pytest.raises(ValueError, match="scale 3"):
        MTSelfAttn(32, 4, (1, 3))(video)


def test_zero_init_blocks_start_as_identity_and_can_move():
    video, audio = streams()
    assert MTSelfAttn(32, 4)(video).abs().max() == 0
    for mod in (GCMAttn(32, 4, group=2), BiBlockCrossAttn(32, 4)):
        dv, da = mod(video, audio)
        assert dv.abs().max() == 0 and da.abs().max() == 0
        dv, da = randomise(mod)(video, audio)        # ...and they are not identically zero maps
        assert dv.abs().mean() > 1e-2 and da.abs().mean() > 1e-2
    assert randomise(MTSelfAttn(32, 4))(video).abs().mean() > 1e-2


def test_mt_selfattn_is_temporal_only():
    """Tokens at one spatial position never see another position: perturb position 0, the others
    keep their updates."""
    mod = randomise(MTSelfAttn(32, 4))
    video, _ = streams()
    moved = video.clone()
    moved[:, :, 0] += torch.randn_like(moved[:, :, 0])   # (a constant would be normed away)
    a, b = mod(video), mod(moved)
    assert (a[:, :, 0] - b[:, :, 0]).abs().max() > 1e-3
    torch.testing.assert_close(a[:, :, 1:], b[:, :, 1:])


def test_gcm_is_local_to_its_group():
    """Changing audio in group 1 (frames 2-3, g=2) changes only those frames' video update."""
    mod = randomise(GCMAttn(32, 4, group=2))
    video, audio = streams()
    moved = audio.clone()
    moved[:, 2:4] += torch.randn_like(moved[:, 2:4])
    (dv0, _), (dv1, _) = mod(video, audio), mod(video, moved)
    changed = (dv0 - dv1).abs().amax(dim=(0, 2, 3))
    assert changed[2:4].min() > 1e-3
    assert changed[:2].max() < 1e-6 and changed[4:].max() < 1e-6


def test_biblock_shares_one_logit_matrix():
    """Gates 1, output projections the identity: the two updates must equal softmax(S)V_a and
    softmax(Sᵀ)V_v computed from ONE explicit S = Q_v K_aᵀ/√d per frame and head."""
    heads, D = 4, 32
    mod = randomise(BiBlockCrossAttn(D, heads))
    with torch.no_grad():
        for out, gate in ((mod.out_v, mod.gate_v), (mod.out_a, mod.gate_a)):
            out.weight.copy_(torch.eye(D)); out.bias.zero_(); gate.fill_(1.0)
    video, audio = streams(D=D)
    dv, da = mod(video, audio)
    q_v, val_v = mod.qv_v(mod.norm_v(video)).chunk(2, dim=-1)
    k_a, val_a = mod.kv_a(mod.norm_a(audio)).chunk(2, dim=-1)
    split = lambda t: t.unflatten(-1, (heads, D // heads)).transpose(-2, -3)      # B×T×H×N×d
    S = split(q_v) @ split(k_a).transpose(-1, -2) / (D // heads) ** 0.5        # B×T×H×Nv×Na
    ref_v = (S.softmax(-1) @ split(val_a)).transpose(-2, -3).flatten(-2)
    ref_a = (S.transpose(-1, -2).softmax(-1) @ split(val_v)).transpose(-2, -3).flatten(-2)
    torch.testing.assert_close(dv, ref_v, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(da, ref_a, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- autoencoder.py
def clip(cfg, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    video = torch.rand(B, 3, cfg.frames, cfg.image_size, cfg.image_size, generator=g) * 2 - 1
    audio = torch.rand(B, 1, cfg.frames, cfg.n_mels, cfg.mel_width, generator=g) * 2 - 1
    return video, audio


def test_mdsa_tiny_shapes_and_api():
    cfg = get_config("tiny")
    torch.manual_seed(0)
    model = MDSA(cfg)
    video, audio = clip(cfg)
    L, c = cfg.latent_size, cfg.latent_channels
    planes = model.encode(video, audio)
    assert len(planes) == 6 and all(p.shape == (2, c, L, L) for p in planes)
    rec_v, rec_a = model.decode(planes)
    assert rec_v.shape == video.shape and rec_a.shape == audio.shape
    solo = model.encode(audio=audio, sample=True)
    assert solo[:3] == (None, None, None) and all(p.shape == (2, c, L, L) for p in solo[3:])
    out = model.loss(video, audio)
    assert out["loss"].requires_grad and out["loss"].dim() == 0
    assert not out["kl"].requires_grad and out["kl"] > 0
    assert out["video_rec"].shape == video.shape and out["audio_rec"].shape == audio.shape
    expect = (out["l1_video"] + out["l1_audio"] + cfg.mse_weight * (out["mse_video"] + out["mse_audio"])
              + cfg.kl_weight * out["kl"])
    torch.testing.assert_close(out["mse_video"], (out["video_rec"] - video).pow(2).mean())
    torch.testing.assert_close(out["loss"].detach(), expect)
    with pytest.raises(ValueError, match="video must be"):
        model.encode(video=video[:, :, :8])


def test_time_is_the_row_axis_of_temporal_planes():
    """A grid that varies only in time must give hw planes constant over space, and th / tw planes
    whose ROWS vary (time) and whose columns do not."""
    T, h, w, C = 4, 4, 4, 16
    pool = randomise(AxisPool(C, 4, (T, h, w)))
    with torch.no_grad():
        pool.pos_h.zero_(); pool.pos_w.zero_()      # spatial positions would break the symmetry
    grid = torch.randn(1, T, 1, C).expand(1, T, h * w, C)
    z_hw, z_th, z_tw = pool(grid)
    assert z_hw.shape == (1, h, w, C) and z_th.shape == (1, T, h, C) and z_tw.shape == (1, T, w, C)
    for z in (z_th, z_tw):
        assert (z - z[:, :, :1]).abs().max() < 1e-5     # constant along the spatial (column) axis
        assert (z - z[:, :1]).abs().max() > 1e-2        # varies along rows = time
    assert (z_hw - z_hw[:, :1, :1]).abs().max() < 1e-5


def test_cross_modal_dropout_encodes_like_one_modality():
    cfg = get_config("tiny", ae_channels=32, xmodal_dropout=1.0)
    torch.manual_seed(0)
    model = MDSA(cfg)
    for blk in model.enc_blocks:
        randomise(blk.gcm), randomise(blk.biblock)     # make cross-modal layers matter
    video, audio = clip(cfg, B=1)
    model.eval()
    joint, alone = model.encode(video, audio), model.encode(video=video)
    assert (joint[0] - alone[0]).abs().max() > 1e-3   # cross-modal layers change the video planes
    model.train()                                      # p = 1: the encoder always drops them
    dropped = model.encode(video, audio)
    for d, a in zip(dropped[:3], alone[:3]):
        torch.testing.assert_close(d, a)


@pytest.mark.parametrize("full_res_block", [False, True])
def test_full_resolution_block_is_optional(full_res_block):
    # the stem and the head hold a ResBlock at every level, the full frame's only if asked; the
    # shapes and the API stay the same either way
    cfg = get_config("tiny", ae_full_res_block=full_res_block)
    model = MDSA(cfg)
    for stream in (model.video, model.audio):
        full = [m for part in (stream.stem, stream.head) for m in part if isinstance(m, ResBlock2d)
                and m.body[2].in_channels == stream.stem[0].out_channels]  # blocks at conv_in's width
        assert len(full) == (2 if full_res_block else 0)
    video, audio = clip(cfg)
    rec_v, rec_a = model.decode(model.encode(video, audio))
    assert rec_v.shape == video.shape and rec_a.shape == audio.shape
    old = cfg.to_dict()
    del old["ae_full_res_block"]                                  # a config saved before the option
    assert Config.from_dict(old).ae_full_res_block is True


def test_stem_factor_must_be_power_of_two():
    with pytest.raises(ValueError, match="power of 2"):
        MDSA(get_config("tiny", image_size=24, video_down=3))


def test_mdsa_paper_preset_on_meta_device():
    cfg = get_config("paper")
    with torch.device("meta"):
        model = MDSA(cfg).eval()
        video = torch.empty(1, 3, cfg.frames, cfg.image_size, cfg.image_size)
        audio = torch.empty(1, 1, cfg.frames, cfg.n_mels, cfg.mel_width)
        planes = model.encode(video, audio)
        rec_v, rec_a = model.decode(planes)
    L = cfg.latent_size
    assert all(p.shape == (1, cfg.latent_channels, L, L) and p.is_meta for p in planes)
    assert rec_v.shape == video.shape and rec_a.shape == audio.shape
    assert 5e6 < sum(p.numel() for p in model.parameters()) < 1e8


def test_psnr():
    x = torch.zeros(4, 4)
    assert abs(float(psnr(x, x + 0.2)) - 10 * torch.log10(torch.tensor(4 / 0.04)).item()) < 1e-6
    assert float(psnr(x, x)) == pytest.approx(100.0)


def test_tiny_mdsa_overfits_one_batch():
    """A small MDSA (tiny, shrunk to 8 frames of 16² and C=32 for speed) memorises one smooth batch:
    the loss falls at least 5× within 150 Adam steps."""
    cfg = get_config("tiny", frames=8, image_size=16, n_mels=16, mel_width=16, ae_channels=32,
                     xmodal_dropout=0.0)
    torch.manual_seed(0)
    model = MDSA(cfg)
    B, T, S, M, Fw = 2, cfg.frames, cfg.image_size, cfg.n_mels, cfg.mel_width
    t = torch.linspace(0, 1, T)[:, None, None]
    ys, xs = torch.linspace(-1, 1, S)[:, None], torch.linspace(-1, 1, S)[None]
    video = 0.8 * torch.stack([torch.stack([torch.sin(3 * xs + 2 * c * ys + 6 * t + b) for c in range(3)])
                               for b in range(B)])                       # moving colour waves
    ym, xm = torch.linspace(-1, 1, M)[:, None], torch.linspace(-1, 1, Fw)[None]
    audio = 0.8 * torch.stack([torch.cos(4 * ym + 2 * (b + 1) * xm - 5 * t)[None] for b in range(B)])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(150):
        out = model.loss(video, audio)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    final = sum(losses[-5:]) / 5                       # the loss samples the posterior: average
    assert losses[0] / final > 5, f"loss fell only from {losses[0]:.3f} to {final:.3f}"
    assert psnr(out["video_rec"], video) > 15

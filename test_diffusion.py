"""
The forward processes of PAPER.md §5 beyond the basics in test_shapes.py: a noise level per
modality (the STDiT's routing of t_v and t_a, the training mixture, the loss over noised planes
only), the DPM-Solver grid even in log-SNR, and rectified flow's path and loss against closed forms.
The samplers are test_sampling.py's. CPU only, seconds.
"""
import pytest
import torch

import diffusion
from config import get_config
from conftest import gaussian_shortcut, gaussian_velocity, randomized
from diffusion import DDPM, logsnr_timesteps
from model import PLANE_NAMES, VIDEO_PLANES, STDiT, latent_shape, unprojected_stdit

SMALL = dict(dit_width=32, dit_depth=2, dit_heads=2)


def no_cross_plane(model):
    """Zero the output of every block's across-plane attention: each plane is then computed from its
    own tokens and its own modulation only, so the routing of t_v / t_a can be tested exactly."""
    with torch.no_grad():
        for block in model.blocks:
            block.temporal.out.weight.zero_()
            block.temporal.out.bias.zero_()
    return model


# ---- the plane masks ----

def test_video_planes_follow_the_plane_names():
    assert VIDEO_PLANES.tolist() == [name.startswith("v_") for name in PLANE_NAMES] == [True] * 3 + [False] * 3


# ---- a noise level per modality: the STDiT ----

@pytest.mark.parametrize("cross_plane,num_classes", [("row", 3), ("position", 0)])
def test_equal_levels_compute_the_one_level_model_exactly(cross_plane, num_classes):
    cfg = get_config("tiny", cross_plane=cross_plane, num_classes=num_classes, **SMALL)
    model = randomized(STDiT(cfg))
    x, t = torch.randn(3, *latent_shape(cfg)), torch.tensor([0, 420, 999])
    for y in ([None, torch.tensor([0, 2, 1])] if num_classes else [None]):
        assert torch.equal(model(x, torch.stack([t, t], dim=1), y), model(x, t, y))
    with pytest.raises(ValueError, match="B×2"):
        model(x, torch.stack([t, t, t], dim=1))


def test_each_modality_reads_its_own_level():
    # Across-plane attention off: the video planes then see only t_v, the audio planes only t_a, and
    # each group computes exactly what the one-level model computes at its own level.
    cfg = get_config("tiny", num_classes=3, **SMALL)
    model = no_cross_plane(randomized(STDiT(cfg)))
    x, y = torch.randn(2, *latent_shape(cfg)), torch.tensor([1, 2])
    t_v, t_a = torch.tensor([100, 700]), torch.tensor([900, 5])
    out = model(x, torch.stack([t_v, t_a], dim=1), y)
    video = VIDEO_PLANES
    torch.testing.assert_close(out[:, :, video], model(x, t_v, y)[:, :, video], rtol=0, atol=1e-6)
    torch.testing.assert_close(out[:, :, ~video], model(x, t_a, y)[:, :, ~video], rtol=0, atol=1e-6)
    assert (out[:, :, video] - model(x, t_a, y)[:, :, video]).abs().max() > 1e-3   # not both t_a
    # changing t_a alone moves the audio planes and leaves the video planes as they are
    moved = model(x, torch.stack([t_v, t_a + 50], dim=1), y)
    assert torch.equal(moved[:, :, video], out[:, :, video])
    assert (moved[:, :, ~video] - out[:, :, ~video]).abs().max() > 1e-3


def test_unprojected_baseline_takes_one_level_only():
    cfg = get_config("tiny", **SMALL)
    model = unprojected_stdit(cfg)
    x = torch.randn(1, *latent_shape(cfg, projected=False))
    assert model(x, torch.tensor([5])).shape == x.shape
    with pytest.raises(ValueError, match="one t per clip"):
        model(x, torch.tensor([[5, 5]]))


# ---- a noise level per modality: training ----

def test_plain_mixture_draws_as_one_level_ddpm():
    # mix (1, 0, 0): the same RNG calls as plain DDPM (t, then the noise), so old runs reproduce
    process = DDPM(1000, mix=(1, 0, 0))
    x0 = torch.randn(4, 2, 6, 3, 3)
    seen = {}

    def model(x_t, t, y=None):
        seen["t"] = t
        return torch.zeros_like(x_t)

    torch.manual_seed(7)
    loss = process.loss(model, x0)
    torch.manual_seed(7)
    t = torch.randint(0, 1000, (4,))
    noise = torch.randn_like(x0)
    assert torch.equal(seen["t"], t) and loss.item() == (noise ** 2).mean().item()


def test_mixture_config_fields_reach_the_process():
    cfg = get_config("tiny", mix_equal=0.2, mix_independent=0.2, mix_clean=0.6)
    assert diffusion.from_config(cfg).mix == pytest.approx((0.2, 0.2, 0.6))
    with pytest.raises(ValueError, match="mix"):
        DDPM(1000, mix=(1, -1, 0))


def test_mixture_frequencies_match_its_weights():
    torch.manual_seed(0)
    n, process = 200_000, DDPM(1000, mix=(0.5, 0.3, 0.2))
    t, clean = process.draw_levels(n, torch.device("cpu"))
    one_clean = clean.any(dim=1)
    equal = (t[:, 0] == t[:, 1]) & ~one_clean
    assert not clean.all(dim=1).any()                                 # never both clean
    assert (t[clean] == 0).all()
    # independent pairs coincide with probability 1/1000
    assert abs(equal.float().mean().item() - (0.5 + 0.3 / 1000)) < 0.005
    assert abs(one_clean.float().mean().item() - 0.2) < 0.005
    assert abs(clean[:, 0].float().mean().item() - 0.1) < 0.005       # each side half the time
    noised = t[~clean].float()                                        # uniform over 0..999
    assert abs(noised.mean().item() - 499.5) < 3 and noised.min() == 0 and noised.max() == 999


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_loss_ignores_the_clean_planes(prediction):
    process = DDPM(1000, prediction=prediction, mix=(0.5, 0.25, 0.25))
    gen = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(4, 2, 6, 3, 3, generator=gen), torch.randn(4, 2, 6, 3, 3, generator=gen)
    t = torch.tensor([[10, 300], [600, 20], [999, 999], [250, 1]])
    clean = torch.tensor([[True, False], [False, True], [False, False], [False, False]])
    t_in = t.masked_fill(clean, 0)
    ab = process.alphas_cumprod.float()[t_in]                       # B×2, then per plane
    ab = torch.where(VIDEO_PLANES, ab[:, :1], ab[:, 1:]).reshape(4, 1, 6, 1, 1)
    exact = noise if prediction == "eps" else ab.sqrt() * noise - (1 - ab).sqrt() * x0
    clean_planes = torch.where(VIDEO_PLANES, clean[:, :1], clean[:, 1:]).reshape(4, 1, 6, 1, 1)

    def wrong_on_clean(x_t, t_, y=None):
        assert torch.equal(t_, t_in)                                  # a clean modality is told t = 0
        assert torch.equal(torch.where(clean_planes, x_t, 0.0), torch.where(clean_planes, x0, 0.0))
        return torch.where(clean_planes, exact + 5.0, exact)         # right on the noised planes only

    assert process.loss(wrong_on_clean, x0, t=t, noise=noise, clean=clean).item() < 1e-10
    # the same error on a noised plane counts, averaged over the noised elements only
    loss = process.loss(lambda x_t, t_, y=None: exact + 1.0 * (~clean_planes), x0, t=t, noise=noise,
                          clean=clean)
    assert loss.item() == pytest.approx(1.0, abs=1e-6)
    # with no clean planes a per-modality t is plain q_sample noise at each group's level
    seen = {}
    process.loss(lambda x_t, t_, y=None: seen.setdefault("x", x_t), x0, t=t, noise=noise)
    ab = process.alphas_cumprod.float()[t]
    ab = torch.where(VIDEO_PLANES, ab[:, :1], ab[:, 1:]).reshape(4, 1, 6, 1, 1)
    torch.testing.assert_close(seen["x"], ab.sqrt() * x0 + (1 - ab).sqrt() * noise)


def test_mixture_loss_trains_a_tiny_stdit():
    torch.manual_seed(0)
    cfg = get_config("tiny", num_classes=3, **SMALL)
    model, process = STDiT(cfg), diffusion.from_config(cfg)
    x0, y = torch.randn(2, *latent_shape(cfg)), torch.tensor([0, 1])
    t, clean = torch.tensor([[150, 600], [400, 0]]), torch.tensor([[False, False], [False, True]])
    noise = torch.randn(x0.shape)
    model.eval()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    first = process.loss(model, x0, y, t=t, noise=noise, clean=clean).item()
    for _ in range(100):
        loss = process.loss(model, x0, y, t=t, noise=noise, clean=clean)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first / 3, f"loss fell only from {first:.3f} to {loss.item():.3f}"


# ---- the DDPM sampling grid even in log-SNR ----

def test_logsnr_grid_is_even_in_log_snr():
    process = DDPM(1000)
    ts = logsnr_timesteps(20, process.alphas_cumprod)
    assert ts[0] == 0 and ts[-1] == 999 and (ts.diff() > 0).all()
    ab = process.alphas_cumprod[ts]
    lam = 0.5 * (ab / (1 - ab)).log()
    steps = lam.diff().abs()
    assert steps.max() < 1.3 * steps.min() + 0.1                      # near-equal λ steps (integer t rounds)
    cosine = DDPM(1000, "cosine")
    for n in (2, 50, 1000):                                           # cosine's steep end still gives distinct t
        ts = logsnr_timesteps(n, cosine.alphas_cumprod)
        assert len(set(ts.tolist())) == n and ts[-1] == 999
    with pytest.raises(ValueError, match="grid"):
        process.levels(10, grid="karras")


# ---- rectified flow: the path and its loss against closed forms ----

def test_flow_routes_each_modality_to_its_planes():
    flow = diffusion.Flow(mix=(0.3, 0.35, 0.35))
    x0, noise = torch.zeros(2, 1, 6, 1, 1), torch.ones(2, 1, 6, 1, 1)
    t = torch.tensor([[0.25, 0.75], [1.0, 0.0]])
    x_t = flow.q_sample(x0, t, noise)[:, 0, :, 0, 0]                  # = t on each plane
    assert torch.equal(x_t[:, VIDEO_PLANES], t[:, :1].expand(2, 3)) and torch.equal(x_t[:, ~VIDEO_PLANES], t[:, 1:].expand(2, 3))
    seen = {}

    def model(x, tt, y=None):
        seen.update(x=x, t=tt)
        return torch.zeros_like(x)
    clean = torch.tensor([[False, True], [False, False]])
    flow.loss(model, x0 + 2.0, t=t, noise=noise, clean=clean)
    assert torch.equal(seen["t"], torch.tensor([[250.0, 0.0], [1000.0, 0.0]]))   # 1000·t, the clean one at 0
    assert (seen["x"][0, :, ~VIDEO_PLANES] == 2.0).all()                         # clean planes are x0 itself
    t_draw, clean_draw = flow.draw_levels(4096, "cpu")
    assert ((t_draw >= 0) & (t_draw <= 1)).all() and (t_draw[clean_draw] == 0).all()


def test_flow_loss_at_the_exact_velocity_is_the_irreducible_value():
    # Var(ε − x0 | x_t) = 1 + sd² − (t − (1−t)·sd²)² / var_t = sd² / var_t, whatever t is
    flow, sd = diffusion.Flow(), 0.7
    t = torch.linspace(0.02, 0.98, 64).repeat_interleave(2000)
    x0 = sd * torch.randn(len(t), 1, 6, 1, 1, generator=torch.Generator().manual_seed(0))
    loss = flow.loss(gaussian_velocity(sd), x0, t=t).item()
    expected = (sd ** 2 / ((1 - t.double()) ** 2 * sd ** 2 + t.double() ** 2)).mean().item()
    assert abs(loss / expected - 1) < 0.01                            # 768k samples: ~0.2% standard error


# ---- Min-SNR-γ loss weighting ----

@pytest.mark.parametrize("process", [DDPM(1000, prediction="v", min_snr_gamma=5.0),
                                     DDPM(1000, prediction="eps", min_snr_gamma=5.0),
                                     diffusion.Flow(min_snr_gamma=5.0), diffusion.Flow(shift=3.0, min_snr_gamma=5.0)],
                         ids=["ddpm-v", "ddpm-eps", "flow", "flow-shift3"])
def test_min_snr_weight_is_min_snr_on_the_x0_error(process):
    """Counted as an x0 error, level t weighs min(SNR_t, γ): the weight on the target's squared error
    times 1/(∂x̂0/∂out)², the slope taken through the process's own as_prediction and x0_eps."""
    x = torch.randn(1, dtype=torch.float64)
    for fraction in (0.02, 0.2, 0.5, 0.8, 0.98):
        level = process.level_at(fraction)
        t = torch.tensor([level], dtype=process.level_dtype)
        alpha, sigma = process.alpha_sigma(level)

        def x0_of(out):
            return process.x0_eps(x, process.as_prediction(out, x, t), level)[0].item()
        slope = x0_of(torch.ones(1, dtype=torch.float64)) - x0_of(torch.zeros(1, dtype=torch.float64))
        weight = process.min_snr_weight(t).item()
        assert weight / slope ** 2 == pytest.approx(min((alpha / sigma) ** 2, 5.0), rel=1e-4), fraction


def test_min_snr_loss_is_the_weighted_mse():
    """With one level per clip, the weighted loss is the mean over clips of w(t_i) times each
    clip's plain MSE; a clean plane's (flow t = 0) weight is 0, not NaN."""
    plain, weighted = DDPM(1000, prediction="v"), DDPM(1000, prediction="v", min_snr_gamma=5.0)
    gen = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(3, 2, 6, 3, 3, generator=gen), torch.randn(3, 2, 6, 3, 3, generator=gen)
    t = torch.tensor([5, 400, 990])

    def model(x_t, t_, y=None):
        return 0.5 * x_t
    per_clip = torch.stack([plain.loss(model, x0[i:i + 1], t=t[i:i + 1], noise=noise[i:i + 1]) for i in range(3)])
    expected = (weighted.min_snr_weight(t) * per_clip).mean()
    assert weighted.loss(model, x0, t=t, noise=noise).item() == pytest.approx(expected.item(), rel=1e-5)
    assert diffusion.Flow(min_snr_gamma=5.0).min_snr_weight(torch.tensor([0.0, 1.0])).tolist() == [0.0, 0.0]


# ---- model guidance: the cross-modal-guided prediction learned into the weights ----

@pytest.mark.parametrize("process", [diffusion.Flow(shift=2.0), DDPM(1000, prediction="v")], ids=["flow", "ddpm-v"])
def test_guided_loss_vanishes_at_the_guided_prediction(process):
    """loss(guidance=w) regresses target + (1 − 1/w)·sg(out − out_alone). A model that outputs
    u = out_alone with its partner at pure noise, and u + w·(target − u) otherwise (the prediction
    sampling's cross-modal guidance at scale w forms), is its fixed point: the loss is 0 for equal,
    independent and one-clean levels alike; the plain loss (w = 1) is not."""
    w, gen = 4.0, torch.Generator().manual_seed(3)
    x0, noise = torch.randn(3, 2, 6, 2, 2, generator=gen), torch.randn(3, 2, 6, 2, 2, generator=gen)
    pure = process.model_time(torch.tensor([process.pure_noise], dtype=process.level_dtype)).item()
    mid = [process.level_at(f) for f in (0.3, 0.6)]
    t = torch.tensor([[mid[0], mid[0]], [mid[0], mid[1]], [mid[1], mid[1]]], dtype=process.level_dtype)
    clean = torch.tensor([[False, False], [False, False], [True, False]])       # the third clip: V2A
    target = process.target(x0, noise, t.masked_fill(clean, process.clean))

    def model(x_t, t_model, y=None):
        video = VIDEO_PLANES[None, None, :, None, None]
        partner_pure = torch.where(video, (t_model[:, 1] == pure)[:, None, None, None, None],
                                   (t_model[:, 0] == pure)[:, None, None, None, None])
        alone = 0.3 * x_t                                      # each plane from its own input only
        guided = alone + w * (target.repeat(len(x_t) // len(target), 1, 1, 1, 1) - alone)
        return torch.where(partner_pure, alone, guided)

    assert process.loss(model, x0, t=t, noise=noise, clean=clean, guidance=w).item() < 1e-10
    assert process.loss(model, x0, t=t, noise=noise, clean=clean).item() > 0.1


def test_guided_loss_with_class_guidance_vanishes_at_both_guided_predictions():
    """With class labels, loss(guidance=w, class_guidance=s) regresses target + ((w − 1)·sg(out −
    out_alone) + (s − 1)·sg(out − out_null))/(w + s − 1). A model whose prediction with its partner
    at pure noise is A, with the null label N, and otherwise target + (w − 1)·(target − A) +
    (s − 1)·(target − N) (what sampling's cross-modal and classifier-free guidance form from copies)
    is its fixed point, with class guidance alone too; the guided loss of a model outputting the
    plain target is not 0."""
    process = diffusion.Flow(shift=2.0)
    process.null_label = 3
    gen = torch.Generator().manual_seed(4)
    x0, noise = torch.randn(3, 2, 6, 2, 2, generator=gen), torch.randn(3, 2, 6, 2, 2, generator=gen)
    t = torch.tensor([[0.3, 0.3], [0.3, 0.7], [0.7, 0.7]])
    y = torch.tensor([0, 2, 1])
    target = process.target(x0, noise, t)
    pure = process.model_time(torch.tensor([process.pure_noise])).item()

    def model_for(w, s, plain=False):
        def model(x_t, t_model, labels=None):
            video = VIDEO_PLANES[None, None, :, None, None]
            partner_pure = torch.where(video, (t_model[:, 1] == pure)[:, None, None, None, None],
                                       (t_model[:, 0] == pure)[:, None, None, None, None])
            null = (labels == process.null_label)[:, None, None, None, None]
            tiled = target.repeat(len(x_t) // len(target), 1, 1, 1, 1)
            alone, unlabelled = 0.3 * x_t, -0.2 * x_t + 0.1            # A and N: any functions of the input
            guided = tiled if plain else tiled + (w - 1) * (tiled - alone) + (s - 1) * (tiled - unlabelled)
            return torch.where(partner_pure, alone, torch.where(null, unlabelled, guided))
        return model

    for w, s in ((4.0, 3.0), (1.0, 3.0)):
        loss = process.loss(model_for(w, s), x0, y, t=t, noise=noise, guidance=w, class_guidance=s)
        assert loss.item() < 1e-10, (w, s)
        assert process.loss(model_for(w, s, plain=True), x0, y, t=t, noise=noise, guidance=w,
                            class_guidance=s).item() > 0.1


def test_a_label_is_dropped_once_per_step():
    """Label dropout happens in the loss, once per clip: the main forward, the guided target's copies
    (the null-label copy aside) and the shortcut's three forwards all see the same labels, some of
    them null at class_dropout 0.5; the model itself never drops a label."""
    cfg = get_config("tiny", num_classes=3, class_dropout=0.5, learned_class_guidance=2.0, **SMALL)
    process = diffusion.from_config(cfg)
    assert (process.null_label, process.class_dropout, process.learned_scales()) == \
        (3, 0.5, {"guidance": 4.0, "class_guidance": 2.0})
    seen = []

    def model(x, t, labels=None, step=None):
        seen.append(labels.clone())
        return torch.zeros_like(x)

    torch.manual_seed(0)
    y, x0 = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]), torch.randn(8, *latent_shape(cfg))
    process.loss(model, x0, y, **process.learned_scales())
    main, copies = seen[0], seen[1].chunk(3)
    assert 0 < (main == 3).sum() < 8 and torch.equal(copies[0], main) and torch.equal(copies[1], main)
    assert (copies[2] == 3).all()
    seen.clear()
    process.consistency_loss(model, x0, y)
    assert len(seen) == 3 and all(torch.equal(labels, seen[0]) for labels in seen) and (seen[0] == 3).any()
    stdit, t = randomized(STDiT(cfg)).train(), torch.tensor([0.5, 0.5])
    assert torch.equal(stdit(x0[:2], t, y[:2]), stdit.eval()(x0[:2], t, y[:2]))
    with pytest.raises(ValueError, match="learned_class_guidance 2.0 needs num_classes > 0 and class_dropout > 0"):
        get_config("tiny", learned_class_guidance=2.0)
    with pytest.raises(ValueError, match="learned_class_guidance must be ≥ 1"):
        get_config("tiny", num_classes=3, learned_class_guidance=0.5)


def test_learned_guidance_runs_one_forward_a_step():
    """A checkpoint trained with learned_guidance ≠ 1 samples without guidance copies by default
    (10 forwards a joint clip, 10 an A2V one); guidance asked for explicitly still applies."""
    from sampling import Sampling, denoiser_forwards
    process = diffusion.from_config(get_config("tiny"))
    assert process.learned_guidance == 4.0
    how = Sampling().for_model(process)
    assert how.xmodal_cfg == 1.0
    assert (denoiser_forwards(process, how, "joint"), denoiser_forwards(process, how, "a2v")) == (10, 10)
    asked = Sampling(xmodal_cfg=2.0).for_model(process)
    assert (asked.xmodal_cfg, denoiser_forwards(process, asked, "joint")) == (2.0, 30)
    plain = diffusion.from_config(get_config("tiny", learned_guidance=1.0))
    assert Sampling().for_model(plain).xmodal_cfg == 4.0
    with pytest.raises(ValueError, match="learned_guidance must be ≥ 1"):
        get_config("tiny", learned_guidance=0.5)
    with pytest.raises(ValueError, match="learned_guidance 4.0 needs mix_independent > 0"):
        get_config("tiny", mix_equal=1.0, mix_independent=0.0, mix_clean=0.0)


# ---- shortcut steps: the self-consistency target ----

def test_consistency_target_of_the_exact_model_is_zero():
    """A model that outputs the exact average velocity over each step (Gaussian data) agrees with
    its own two half steps: the self-consistency loss is 0 at every taught step size whose halves
    are themselves shortcut steps, for joint and one-clean clips alike. At the finest size the
    halves are the instantaneous velocity (two Euler steps of 1/128), so the loss is small, not 0;
    a model whose step ignores δ is far off."""
    flow, sd = diffusion.Flow(shift=2.0), 0.5
    gen = torch.Generator().manual_seed(4)
    x0 = sd * torch.randn(6, 1, 6, 1, 1, generator=gen, dtype=torch.float64)
    noise = torch.randn(6, 1, 6, 1, 1, generator=gen, dtype=torch.float64)
    clean = torch.tensor([[False, False], [True, False], [False, True]] * 2)
    exact = gaussian_shortcut(sd, flow.shift)
    for k in range(diffusion.SHORTCUT_LEVELS):
        ks = torch.full((6,), k)
        u = torch.tensor([1.0, 0.5, 1.0, 0.5 ** k, 1.0, 1.0], dtype=torch.float64)   # multiples of 2^-k
        u = torch.maximum(u - u % 0.5 ** k, torch.tensor(0.5 ** k, dtype=torch.float64))
        loss = flow.consistency_loss(exact, x0, k=ks, u=u, clean=clean, noise=noise).item()
        assert loss < (1e-4 if k == diffusion.SHORTCUT_LEVELS - 1 else 1e-12), (k, loss)
    instant = lambda x, t_model, y=None, step=None: gaussian_shortcut(sd, flow.shift)(x, t_model, y)  # noqa: E731
    assert flow.consistency_loss(instant, x0, k=torch.zeros(6, dtype=torch.long), u=torch.ones(6, dtype=torch.float64),
                                 clean=clean, noise=noise).item() > 0.01


def test_shortcut_model_starts_as_the_flow_model_and_trains():
    """A fresh STDiT with shortcut steps outputs the same for every step size (its step embedding's
    output layer is zero), so the shortcut phase starts from the flow model; its loss has a
    gradient into that embedding. A model without them refuses a step size."""
    cfg = get_config("tiny", shortcut_steps=100, **SMALL)
    model, process = STDiT(cfg), diffusion.from_config(cfg)
    with torch.no_grad():
        for block in model.blocks:                                    # open the gates: a non-trivial output
            block.modulation[-1].weight.normal_(0, 0.1)
        model.final.linear.weight.normal_(0, 0.1)
    x, t = torch.randn(2, *latent_shape(cfg)), torch.tensor([300.0, 800.0])
    assert torch.equal(model(x, t), model(x, t, step=torch.tensor([125.0, 1000.0])))
    x0 = torch.randn(8, *latent_shape(cfg))
    process.shortcut_loss(model, x0, guidance=4.0).backward()
    assert model.step_embed.mlp[2].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="trained without shortcut steps"):
        STDiT(get_config("tiny", shortcut_steps=0, **SMALL))(x, t, step=t)
    with pytest.raises(ValueError, match="shortcut_steps 100 needs objective flow"):
        get_config("tiny", shortcut_steps=100, objective="ddpm")

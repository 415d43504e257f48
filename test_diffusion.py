"""
The diffusion process of PAPER.md §5 beyond the basics in test_shapes.py: seeded sampling, a noise
level per modality (the STDiT's routing of t_v and t_a, the training mixture, the loss over noised
planes only), native A2V / V2A sampling against the exact conditional of a Gaussian toy, and
DPM-Solver++ against the exact probability-flow solution of Gaussian data. CPU only, seconds.
"""
import math

import pytest
import torch

from config import get_config
import diffusion as processes
from diffusion import Diffusion, logsnr_timesteps
from sampling import Sampling, ddim_step, dpm_step, native_prediction, sample_latent
from model import PLANE_NAMES, VIDEO_PLANES, STDiT, latent_shape, unprojected_stdit

SMALL = dict(dit_width=32, dit_depth=2, dit_heads=2)


def randomized(model, seed=0):
    """Random weights in the zero-initialised layers too, so every path through the model shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


def no_cross_plane(model):
    """Zero the output of every block's across-plane attention: each plane is then computed from its
    own tokens and its own modulation only, so the routing of t_v / t_a can be tested exactly."""
    with torch.no_grad():
        for block in model.blocks:
            block.temporal.out.weight.zero_()
            block.temporal.out.bias.zero_()
    return model


# ---- the plane masks and seeded sampling ----

def test_video_planes_follow_the_plane_names():
    assert VIDEO_PLANES.tolist() == [name.startswith("v_") for name in PLANE_NAMES] == [True] * 3 + [False] * 3


def test_one_generator_seed_fixes_a_sample():
    cfg = get_config("tiny", **SMALL)
    model, diffusion = randomized(STDiT(cfg)), processes.from_config(cfg)
    shape = (2, *latent_shape(cfg))
    known = torch.randn(shape, generator=torch.Generator().manual_seed(9))

    def run(seed, known=None, known_mask=None, **how):               # no `noise`: the start comes from the seed too
        return sample_latent(diffusion, model, shape, Sampling(steps=4, **how), known=known, known_mask=known_mask,
                             generator=torch.Generator().manual_seed(seed))

    for kw in (dict(sampler="ddpm"), dict(sampler="ddim", eta=0.0, known=known, known_mask=VIDEO_PLANES,
                                           conditioning="replace", guidance=0.0),
               dict(sampler="dpm++", known=known, known_mask=~VIDEO_PLANES, conditioning="native", xmodal_cfg=2.0)):
        assert torch.equal(run(3, **kw), run(3, **kw)), kw
        assert not torch.allclose(run(3, **kw), run(4, **kw)), kw


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
    diffusion = Diffusion(1000, mix=(1, 0, 0))
    x0 = torch.randn(4, 2, 6, 3, 3)
    seen = {}

    def model(x_t, t, y=None):
        seen["t"] = t
        return torch.zeros_like(x_t)

    torch.manual_seed(7)
    loss = diffusion.loss(model, x0)
    torch.manual_seed(7)
    t = torch.randint(0, 1000, (4,))
    noise = torch.randn_like(x0)
    assert torch.equal(seen["t"], t) and loss.item() == (noise ** 2).mean().item()


def test_mixture_config_fields_reach_the_diffusion():
    cfg = get_config("tiny", mix_equal=0.2, mix_independent=0.2, mix_clean=0.6)
    assert processes.from_config(cfg).mix == pytest.approx((0.2, 0.2, 0.6))
    with pytest.raises(ValueError, match="mix"):
        Diffusion(1000, mix=(1, -1, 0))


def test_mixture_frequencies_match_its_weights():
    torch.manual_seed(0)
    n, diffusion = 200_000, Diffusion(1000, mix=(0.5, 0.3, 0.2))
    t, clean = diffusion.draw_levels(n, torch.device("cpu"))
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
    diffusion = Diffusion(1000, prediction=prediction, mix=(0.5, 0.25, 0.25))
    gen = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(4, 2, 6, 3, 3, generator=gen), torch.randn(4, 2, 6, 3, 3, generator=gen)
    t = torch.tensor([[10, 300], [600, 20], [999, 999], [250, 1]])
    clean = torch.tensor([[True, False], [False, True], [False, False], [False, False]])
    t_in = t.masked_fill(clean, 0)
    ab = diffusion.alphas_cumprod.float()[t_in]                       # B×2, then per plane
    ab = torch.where(VIDEO_PLANES, ab[:, :1], ab[:, 1:]).reshape(4, 1, 6, 1, 1)
    exact = noise if prediction == "eps" else ab.sqrt() * noise - (1 - ab).sqrt() * x0
    clean_planes = torch.where(VIDEO_PLANES, clean[:, :1], clean[:, 1:]).reshape(4, 1, 6, 1, 1)

    def wrong_on_clean(x_t, t_, y=None):
        assert torch.equal(t_, t_in)                                  # a clean modality is told t = 0
        assert torch.equal(torch.where(clean_planes, x_t, 0.0), torch.where(clean_planes, x0, 0.0))
        return torch.where(clean_planes, exact + 5.0, exact)         # right on the noised planes only

    assert diffusion.loss(wrong_on_clean, x0, t=t, noise=noise, clean=clean).item() < 1e-10
    # the same error on a noised plane counts, averaged over the noised elements only
    loss = diffusion.loss(lambda x_t, t_, y=None: exact + 1.0 * (~clean_planes), x0, t=t, noise=noise,
                          clean=clean)
    assert loss.item() == pytest.approx(1.0, abs=1e-6)
    # with no clean planes a per-modality t is plain q_sample noise at each group's level
    seen = {}
    diffusion.loss(lambda x_t, t_, y=None: seen.setdefault("x", x_t), x0, t=t, noise=noise)
    ab = diffusion.alphas_cumprod.float()[t]
    ab = torch.where(VIDEO_PLANES, ab[:, :1], ab[:, 1:]).reshape(4, 1, 6, 1, 1)
    torch.testing.assert_close(seen["x"], ab.sqrt() * x0 + (1 - ab).sqrt() * noise)


def test_mixture_loss_trains_a_tiny_stdit():
    torch.manual_seed(0)
    cfg = get_config("tiny", num_classes=3, **SMALL)
    model, diffusion = STDiT(cfg), processes.from_config(cfg)
    x0, y = torch.randn(2, *latent_shape(cfg)), torch.tensor([0, 1])
    t, clean = torch.tensor([[150, 600], [400, 0]]), torch.tensor([[False, False], [False, True]])
    noise = torch.randn(x0.shape)
    model.eval()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    first = diffusion.loss(model, x0, y, t=t, noise=noise, clean=clean).item()
    for _ in range(100):
        loss = diffusion.loss(model, x0, y, t=t, noise=noise, clean=clean)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first / 3, f"loss fell only from {first:.3f} to {loss.item():.3f}"


# ---- native A2V / V2A against the exact conditional of a Gaussian toy ----

def toy_covariance(rho=0.9):
    """6×6 covariance of (video, audio) vectors, one value per plane (latent B×1×6×1×1): unit
    marginal variances, audio = rho·(a rotation of the video) + noise, so each modality pins the
    other down to a conditional variance far below the marginal one."""
    gen = torch.Generator().manual_seed(0)
    rotation, _ = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    video = torch.tensor([[1.0, 0.3, -0.2], [0.3, 1.0, 0.1], [-0.2, 0.1, 1.0]], dtype=torch.float64)
    cross = rho * video @ rotation.T
    audio = rho ** 2 * rotation @ video @ rotation.T + (1 - rho ** 2) * torch.eye(3, dtype=torch.float64)
    return torch.cat([torch.cat([video, cross], 1), torch.cat([cross.T, audio], 1)])


class GaussianDenoiser(torch.nn.Module):
    """The exact denoiser of x0 ~ N(0, cov) on latents `B×1×6×1×1`, at one level per clip (t `B`) or
    per modality (t `B×2`, where t = 0 means given clean: ᾱ = 1). With a = √ᾱ and s = 1 − ᾱ per plane:
    x_t ~ N(0, diag(a)·cov·diag(a) + diag(s)), and E[x0 | x_t] = cov·diag(a)·(that covariance)⁻¹·x_t.
    Returns ε̂ (0 on clean planes), or v̂ = √ᾱ·ε̂ − √(1−ᾱ)·x̂0 for a v-prediction diffusion."""

    def __init__(self, diffusion, cov):
        super().__init__()
        self.diffusion, self.cov, self.calls = diffusion, cov, []

    def forward(self, x, t, y=None):
        self.calls.append((x.clone(), t.clone()))
        z = x.reshape(x.shape[0], 6).double()
        table = self.diffusion.alphas_cumprod
        if t.dim() == 1:
            ab = table[t][:, None].expand(-1, 6)
        else:
            per_modality = torch.where(t == 0, torch.ones((), dtype=torch.float64), table[t])
            ab = torch.where(VIDEO_PLANES, per_modality[:, :1], per_modality[:, 1:])
        a, s = ab.sqrt(), 1 - ab
        cov_t = a[:, :, None] * self.cov * a[:, None, :] + torch.diag_embed(s)
        x0 = (self.cov @ (a * torch.linalg.solve(cov_t, z))[..., None])[..., 0]
        eps = torch.where(s > 0, (z - a * x0) / s.clamp(min=1e-30).sqrt(), torch.zeros_like(z))
        out = eps if self.diffusion.prediction == "eps" else a * eps - s.sqrt() * x0
        return out.reshape(x.shape).to(x.dtype)


def conditional(cov, given, video_given):
    """Mean and covariance of the free modality given the other's value `given` (3,)."""
    free, known = (slice(3, 6), slice(0, 3)) if video_given else (slice(0, 3), slice(3, 6))
    gain = cov[free, known] @ torch.linalg.inv(cov[known, known])
    return gain @ given, cov[free, free] - gain @ cov[known, free]


@pytest.mark.parametrize("prediction,video_given", [("eps", False), ("v", True)])
def test_native_conditioning_samples_the_exact_conditional(prediction, video_given):
    cov, n = toy_covariance(), 20_000
    diffusion = Diffusion(1000, prediction=prediction)
    model = GaussianDenoiser(diffusion, cov)
    given = torch.tensor([1.0, -0.5, 0.8], dtype=torch.float64)
    mask = VIDEO_PLANES if video_given else ~VIDEO_PLANES
    known = torch.zeros(n, 1, 6, 1, 1)
    known[:, 0, mask, 0, 0] = given.float()
    mean, var = conditional(cov, given, video_given)
    out = sample_latent(diffusion, model, known.shape,
                        Sampling(sampler="dpm++", steps=50, eta=0.0, grid="logsnr", xmodal_cfg=1.0, conditioning="native"),
                        known=known, known_mask=mask, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out[:, :, mask], known[:, :, mask])            # the given planes, untouched
    for x, t in model.calls:                                          # ... and clean at t = 0 in every call
        assert torch.equal(x[:, :, mask], known[:, :, mask]) and (t[:, 0 if video_given else 1] == 0).all()
    free = out[:, 0, ~mask, 0, 0].double()
    assert (free.mean(0) - mean).abs().max() < 0.02                   # std error of the mean ≈ 0.003
    torch.testing.assert_close(torch.cov(free.T), var, rtol=0, atol=0.01)   # entries ≈ 0.1-0.2
    # joint sampling of the same model: the marginal, whose variance (1) is far from the conditional
    joint = sample_latent(diffusion, model, known.shape,
                          Sampling(sampler="dpm++", steps=50, eta=0.0, grid="logsnr", xmodal_cfg=1.0),
                          generator=torch.Generator().manual_seed(1))[:, 0, ~mask, 0, 0].double()
    torch.testing.assert_close(torch.cov(joint.T), cov[~mask][:, ~mask], rtol=0, atol=0.05)
    assert (torch.cov(joint.T).diagonal() > 3 * var.diagonal()).all()


def test_native_conditioning_with_ddpm():
    # the stochastic sampler reaches the same conditional
    cov, n = toy_covariance(), 8000
    diffusion = Diffusion(1000)
    model = GaussianDenoiser(diffusion, cov)
    given = torch.tensor([1.0, -0.5, 0.8], dtype=torch.float64)
    known = torch.zeros(n, 1, 6, 1, 1)
    known[:, 0, 3:, 0, 0] = given.float()
    mean, var = conditional(cov, given, video_given=False)
    out = sample_latent(diffusion, model, known.shape,
                        Sampling(sampler="ddpm", steps=200, xmodal_cfg=1.0, conditioning="native"), known=known,
                        known_mask=~VIDEO_PLANES, generator=torch.Generator().manual_seed(2))
    free = out[:, 0, :3, 0, 0].double()
    assert (free.mean(0) - mean).abs().max() < 0.03
    torch.testing.assert_close(torch.cov(free.T), var, rtol=0, atol=0.02)


def test_native_conditioning_refuses_partial_modalities():
    diffusion, shape = Diffusion(1000), (2, 1, 6, 1, 1)
    model = GaussianDenoiser(diffusion, toy_covariance())
    known = torch.zeros(shape)
    for mask in (torch.tensor([True, False, False, False, False, False]), torch.ones(6, dtype=torch.bool)):
        with pytest.raises(ValueError, match="native"):
            sample_latent(diffusion, model, shape,
                          Sampling(sampler="ddim", steps=2, eta=0.0, xmodal_cfg=1.0, conditioning="native"),
                          known=known, known_mask=mask)
    for bad, name in ((dict(sampler="euler"), "sampler"), (dict(conditioning="both"), "conditioning"),
                      (dict(steps=1001), "steps"), (dict(eta=-1.0), "eta")):
        with pytest.raises(ValueError, match=f"^{name} must be"):     # the message names the setting first
            sample_latent(diffusion, model, shape, Sampling(**bad), known=known, known_mask=VIDEO_PLANES)


def test_cross_modal_guidance_is_one_batched_forward():
    cov = toy_covariance()
    diffusion = Diffusion(1000)
    model = GaussianDenoiser(diffusion, cov)
    n, given = 4000, torch.tensor([1.0, -0.5, 0.8], dtype=torch.float64)
    known = torch.zeros(n, 1, 6, 1, 1)
    known[:, 0, 3:, 0, 0] = given.float()
    run = lambda s: sample_latent(diffusion, model, known.shape,
                                  Sampling(sampler="ddim", steps=20, eta=0.0, xmodal_cfg=s, conditioning="native"),
                                  known=known, known_mask=~VIDEO_PLANES,
                                  generator=torch.Generator().manual_seed(3))
    plain = run(1.0)
    assert all(x.shape[0] == n for x, _ in model.calls)               # s = 1: one plain forward per step
    model.calls.clear()
    guided = run(3.0)
    assert len(model.calls) == 20 and all(x.shape[0] == 2 * n for x, _ in model.calls)
    x, t = model.calls[0]
    assert (t[n:, 1] == diffusion.num_timesteps - 1).all() and (t[:n, 1] == 0).all()   # known: pure noise / clean
    assert abs(x[n:, 0, 3:].std().item() - 1.0) < 0.05               # fresh unit noise in place of the audio
    # s > 1 moves the video past the conditional mean, away from the marginal mean 0
    mean, _ = conditional(cov, given, video_given=False)
    along = lambda out: (out[:, 0, :3, 0, 0].double().mean(0) @ mean / (mean @ mean)).item()  # noqa: E731
    assert abs(along(plain) - 1.0) < 0.05 and along(guided) > along(plain) + 0.05


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_cross_modal_and_class_guidance_combine(prediction):
    # three copies in one forward: ε̂(∅k, y) + s·(ε̂(k, y) − ε̂(∅k, y)) + (g − 1)·(ε̂(k, y) − ε̂(k, ∅))
    cfg = get_config("tiny", num_classes=3, prediction=prediction, **SMALL)
    model, diffusion = randomized(STDiT(cfg)), processes.from_config(cfg)
    gen = torch.Generator().manual_seed(5)
    shape = (2, *latent_shape(cfg))
    x, fresh = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    t, y = torch.tensor([300, 800]), torch.tensor([0, 2])
    mask = VIDEO_PLANES.reshape(1, 1, 6, 1, 1).expand(shape)
    s, g = 2.5, 4.0
    eps = native_prediction(diffusion, model, x, t, y, g, mask, True, s, lambda: fresh)
    t_c = torch.stack([torch.zeros_like(t), t], dim=1)
    t_u = torch.stack([torch.full_like(t, 999), t], dim=1)
    x_u = torch.where(mask, fresh, x)
    e = lambda xx, tt, yy: diffusion.as_prediction(model(xx, tt, yy), xx, tt)  # noqa: E731
    e_c, e_u, e_n = e(x, t_c, y), e(x_u, t_u, y), e(x, t_c, torch.full_like(y, 3))
    free = ~mask
    torch.testing.assert_close(eps[free], (e_u + s * (e_c - e_u) + (g - 1) * (e_c - e_n))[free],
                               rtol=1e-4, atol=1e-5)
    only_class = native_prediction(diffusion, model, x, t, y, g, mask, True, 1.0, lambda: fresh)
    torch.testing.assert_close(only_class[free], (e_n + g * (e_c - e_n))[free], rtol=1e-4, atol=1e-5)
    out = sample_latent(diffusion, model, shape,
                        Sampling(sampler="dpm++", steps=4, eta=0.0, cfg_scale=g, xmodal_cfg=s, conditioning="native"),
                        y=y, known=x, known_mask=VIDEO_PLANES, generator=torch.Generator().manual_seed(6))
    assert torch.isfinite(out).all() and torch.equal(out[:, :, VIDEO_PLANES], x[:, :, VIDEO_PLANES])


# ---- DPM-Solver++(2M) against the exact probability-flow ODE of Gaussian data ----

def gaussian_eps(diffusion, sd):
    """The exact ε̂ of x0 ~ N(0, sd²·I): x_t ~ N(0, ᾱ·sd² + 1 − ᾱ), so ε̂ = √(1−ᾱ)·x_t / (ᾱ·sd² + 1 − ᾱ)."""
    def model(x, t, y=None):
        ab = diffusion.alphas_cumprod[t].reshape(-1, *[1] * (x.dim() - 1))
        return ((1 - ab).sqrt() / (ab * sd ** 2 + 1 - ab) * x.double()).to(x.dtype)
    return model


@pytest.mark.parametrize("sd,grid", [(0.5, "logsnr"), (2.0, "logsnr"), (0.5, "time"), (2.0, "time")])
def test_dpm_solver_follows_the_exact_ode(sd, grid):
    # The probability-flow ODE maps a Gaussian to a Gaussian by scaling: x_t/√(ᾱ·sd² + 1 − ᾱ) stays
    # constant along it, so from x at t = 999 the clean end point is sd·x/√(ᾱ_999·sd² + 1 − ᾱ_999).
    diffusion = Diffusion(1000)
    model = gaussian_eps(diffusion, sd)
    noise = torch.randn(4000, 1, 6, 1, 1, generator=torch.Generator().manual_seed(0))  # a scaling: few clips do
    ab = diffusion.alphas_cumprod[-1].item()
    exact = sd * noise / (ab * sd ** 2 + 1 - ab) ** 0.5

    def miss(sampler, steps):
        out = sample_latent(diffusion, model, noise.shape,
                            Sampling(sampler=sampler, steps=steps, eta=0.0, grid=grid, xmodal_cfg=1.0),
                            noise=noise)
        return ((out - exact).norm() / exact.norm()).item()

    dpm, ddim = miss("dpm++", 20), miss("ddim", 20)
    assert dpm < ddim / 2                                             # second order against first
    if grid == "logsnr":                                              # 20 steps: the variance within 3%
        assert dpm < 0.015
    assert miss("dpm++", 1000) < 1e-3 and miss("ddim", 1000) < 5e-3   # both converge to the ODE


def test_dpm_solver_variance_converges_at_second_order():
    diffusion, sd = Diffusion(1000), 0.5
    model = gaussian_eps(diffusion, sd)
    noise = torch.randn(200_000, 1, 6, 1, 1, generator=torch.Generator().manual_seed(1))
    var = lambda steps: sample_latent(diffusion, model, noise.shape,
                                      Sampling(sampler="dpm++", steps=steps, eta=0.0, grid="logsnr", xmodal_cfg=1.0),
                                      noise=noise).var().item() / sd ** 2
    v20, v40 = var(20), var(40)
    assert abs(v20 - 1) < 0.035 and abs(v40 - 1) < 0.01               # halving h quarters the error
    assert abs(v40 - 1) < abs(v20 - 1) / 3


def test_logsnr_grid_is_even_in_log_snr():
    diffusion = Diffusion(1000)
    ts = logsnr_timesteps(20, diffusion.alphas_cumprod)
    assert ts[0] == 0 and ts[-1] == 999 and (ts.diff() > 0).all()
    ab = diffusion.alphas_cumprod[ts]
    lam = 0.5 * (ab / (1 - ab)).log()
    steps = lam.diff().abs()
    assert steps.max() < 1.3 * steps.min() + 0.1                      # near-equal λ steps (integer t rounds)
    cosine = Diffusion(1000, "cosine")
    for n in (2, 50, 1000):                                           # cosine's steep end still gives distinct t
        ts = logsnr_timesteps(n, cosine.alphas_cumprod)
        assert len(set(ts.tolist())) == n and ts[-1] == 999
    with pytest.raises(ValueError, match="grid"):
        diffusion.levels(10, grid="karras")


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_dpm_solver_with_labels_and_replacement(prediction):
    cfg = get_config("tiny", num_classes=3, prediction=prediction, **SMALL)
    model, diffusion = randomized(STDiT(cfg)), processes.from_config(cfg)
    shape = (2, *latent_shape(cfg))
    gen = torch.Generator().manual_seed(7)
    noise, known = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    y = torch.tensor([0, 2])
    a = sample_latent(diffusion, model, shape,
                      Sampling(sampler="dpm++", steps=6, eta=0.0, cfg_scale=3.0, xmodal_cfg=1.0), y=y,
                      noise=noise)
    b = sample_latent(diffusion, model, shape,
                      Sampling(sampler="dpm++", steps=6, eta=0.0, cfg_scale=1.0, xmodal_cfg=1.0), y=y,
                      noise=noise)
    assert torch.isfinite(a).all() and (a - b).abs().max() > 1e-3     # the guidance scale acts
    out = sample_latent(diffusion, model, shape,
                        Sampling(sampler="dpm++", steps=6, eta=0.0, xmodal_cfg=1.0, conditioning="replace", guidance=2.0),
                        known=known, known_mask=VIDEO_PLANES, generator=torch.Generator().manual_seed(8))
    assert torch.equal(out[:, :, VIDEO_PLANES], known[:, :, VIDEO_PLANES]) and torch.isfinite(out).all()


def test_dpm_solver_sde_step_is_ddpm_posterior_step():
    # At η = 1 a first-order SDE-DPM-Solver++ step (no history yet) is DDPM's posterior step: the
    # same mean and the same noise scale, so the same x from the same draw, at any step size.
    diffusion = Diffusion(1000)
    x, eps, z = torch.randn(3, 1000, generator=torch.Generator().manual_seed(4))
    for t, t_prev in ((999, 700), (600, 400), (50, 0)):
        sde, _ = dpm_step(diffusion, x, eps, t, t_prev, None, 1.0, lambda: z)
        ddpm = ddim_step(diffusion, x, eps, t, t_prev, "ddpm", 0.0, lambda: z)
        torch.testing.assert_close(sde, ddpm, rtol=1e-5, atol=1e-6)


def test_dpm_solver_sde_samples_the_data_distribution():
    # Stochastic steps do not follow one trajectory, so the check is on the distribution: with many
    # steps the SDE form recovers the data's variance; with η = 0 at the same steps, so does the ODE.
    diffusion, sd = Diffusion(1000), 0.5
    model = gaussian_eps(diffusion, sd)
    var = lambda eta: sample_latent(diffusion, model, (100_000, 1, 6, 1, 1),
                                    Sampling(sampler="dpm++", steps=250, eta=eta, grid="logsnr", xmodal_cfg=1.0),
                                    generator=torch.Generator().manual_seed(5)).var().item()
    assert abs(var(1.0) / sd ** 2 - 1) < 0.01 and abs(var(0.0) / sd ** 2 - 1) < 0.01


def test_joint_cross_modal_guidance_strengthens_the_dependence():
    """Joint sampling with xmodal_cfg s: each modality pushed away from what it makes with its
    partner at pure noise. s = 1 is plain joint sampling; s > 1 ties the modalities tighter than the
    data does (a larger cross-covariance), as a label's guidance sharpens p(x | y)."""
    cov, n = toy_covariance(), 20_000
    diffusion = Diffusion(1000)
    model = GaussianDenoiser(diffusion, cov)
    shape = (n, 1, 6, 1, 1)

    def cross(s):
        out = sample_latent(diffusion, model, shape,
                            Sampling(sampler="dpm++", steps=30, eta=0.0, grid="logsnr", xmodal_cfg=s),
                            generator=torch.Generator().manual_seed(2))[:, 0, :, 0, 0].double()
        return torch.cov(out.T)[:3, 3:]

    plain = cross(1.0)
    torch.testing.assert_close(plain, cov[:3, 3:], rtol=0, atol=0.05)         # s = 1: the data's joint
    guided = cross(3.0)
    assert guided.norm() > 2 * plain.norm()                          # s = 3 roughly quadruples it here
    model.calls.clear()
    cross(3.0)
    x, t = model.calls[0]                                             # one forward of three copies
    assert len(x) == 3 * n and t.shape == (3 * n, 2)
    assert (t[n:2 * n, 1] == 999).all() and (t[2 * n:, 0] == 999).all() and (t[:n, 0] == t[:n, 1]).all()


# ---- rectified flow: the path, its loss, and its solvers against closed forms ----

def test_flow_routes_each_modality_to_its_planes():
    flow = processes.Flow(mix=(0.3, 0.35, 0.35))
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


def gaussian_velocity(sd):
    """The exact v̂ of x0 ~ N(0, sd²·I) on the flow path: x_t ~ N(0, (1−t)²·sd² + t²), and
    E[ε − x0 | x_t] = (t − (1−t)·sd²) / ((1−t)²·sd² + t²) · x_t. The model sees 1000·t."""
    def model(x, t_model, y=None):
        t = (t_model / 1000.0).double().reshape(-1, *[1] * (x.dim() - 1))
        var = (1 - t) ** 2 * sd ** 2 + t ** 2
        return ((t - (1 - t) * sd ** 2) / var * x.double()).to(x.dtype)
    return model


def test_flow_loss_at_the_exact_velocity_is_the_irreducible_value():
    # Var(ε − x0 | x_t) = 1 + sd² − (t − (1−t)·sd²)² / var_t = sd² / var_t, whatever t is
    flow, sd = processes.Flow(), 0.7
    t = torch.linspace(0.02, 0.98, 64).repeat_interleave(2000)
    x0 = sd * torch.randn(len(t), 1, 6, 1, 1, generator=torch.Generator().manual_seed(0))
    loss = flow.loss(gaussian_velocity(sd), x0, t=t).item()
    expected = (sd ** 2 / ((1 - t.double()) ** 2 * sd ** 2 + t.double() ** 2)).mean().item()
    assert abs(loss / expected - 1) < 0.01                            # 768k samples: ~0.2% standard error


@pytest.mark.parametrize("sampler,order", [("euler", 1), ("dpm++", 2)])
def test_flow_solvers_converge_at_their_order(sampler, order):
    # The flow ODE maps N(0, 1) at t = 1 to N(0, sd²) at t = 0 by scaling: x_0 = sd·x_1 exactly.
    flow, sd = processes.Flow(), 0.5
    noise = torch.randn(2000, 1, 6, 1, 1, generator=torch.Generator().manual_seed(0)).double()
    miss = lambda steps: ((sample_latent(flow, gaussian_velocity(sd), noise.shape,
                                         Sampling(sampler, steps, eta=0.0, xmodal_cfg=1.0), noise=noise).double()
                           - sd * noise).norm() / (sd * noise).norm()).item()
    # halving the step divides the error by 2^order; DPM-Solver++ reaches its order late on a grid
    # uniform in t (its λ-step into the lowest level, log 2, does not shrink): 1.6 at 40 → 80 steps,
    # 1.74 and 1.78 from 80 → 160 → 320
    errors = [miss(n) for n in (80, 160, 320)]
    measured = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert all(abs(m - order) < 0.3 for m in measured), (errors, measured)
    assert miss(20) < (0.02 if order == 2 else 0.1)                  # and already close at 20 steps


class FlowGaussianDenoiser(torch.nn.Module):
    """The exact v̂ of x0 ~ N(0, cov) on latents `B×1×6×1×1` on the flow path, at one level per clip
    or per modality (the model sees 1000·t; t = 0 is given clean). With a = 1 − t and s = t per
    plane: x_t ~ N(0, diag(a)·cov·diag(a) + diag(s²)), E[x0 | x_t] = cov·diag(a)·C⁻¹·x_t and
    E[ε | x_t] = diag(s)·C⁻¹·x_t; v̂ = E[ε] − E[x0]."""

    def __init__(self, cov):
        super().__init__()
        self.cov, self.calls = cov, []

    def forward(self, x, t_model, y=None):
        self.calls.append((x.clone(), t_model.clone()))
        z, t = x.reshape(x.shape[0], 6).double(), t_model.double() / 1000.0
        t = t[:, None].expand(-1, 6) if t.dim() == 1 else torch.where(VIDEO_PLANES, t[:, :1], t[:, 1:])
        a, s = 1 - t, t
        solved = torch.linalg.solve(a[:, :, None] * self.cov * a[:, None, :] + torch.diag_embed(s ** 2), z)
        x0 = (self.cov @ (a * solved)[..., None])[..., 0]
        return (s * solved - x0).reshape(x.shape).to(x.dtype)


@pytest.mark.parametrize("sampler,video_given", [("dpm++", False), ("euler", True)])
def test_flow_native_conditioning_samples_the_exact_conditional(sampler, video_given):
    cov, n = toy_covariance(), 20000
    flow, model = processes.Flow(mix=(0.3, 0.35, 0.35)), FlowGaussianDenoiser(cov)
    mask = VIDEO_PLANES if video_given else ~VIDEO_PLANES
    given = torch.tensor([1.0, -0.5, 0.8], dtype=torch.float64)
    known = torch.zeros(n, 1, 6, 1, 1)
    known[:, 0, mask, 0, 0] = given.float()
    mean, var = conditional(cov, given, video_given)
    out = sample_latent(flow, model, known.shape, Sampling(sampler, 100, eta=0.0, xmodal_cfg=1.0, conditioning="native"),
                        known=known, known_mask=mask, generator=torch.Generator().manual_seed(1))
    for x, t in model.calls:                                          # the given planes clean at t = 0 in every call
        assert torch.equal(x[:, :, mask], known[:, :, mask]) and (t[:, 0 if video_given else 1] == 0).all()
    free = out[:, 0, ~mask, 0, 0].double()
    assert (free.mean(0) - mean).abs().max() < 0.02
    torch.testing.assert_close(torch.cov(free.T), var, rtol=0, atol=0.015)

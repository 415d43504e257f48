"""
The reverse process of PAPER.md §5 (sampling.py): seeded sampling, the DDIM / DDPM / Euler and
DPM-Solver++(2M) updates against closed forms (the exact probability-flow ODE of Gaussian data on
both paths), guidance (class, cross-modal, reconstruction), A2V / V2A by replacement and natively
against the exact conditional of a Gaussian toy, the noise-process contract the samplers read, and
one sampling request from settings to clips (pipeline.generate_heldout), and shortcut steps landing on
the exact ODE solution. CPU only, seconds each.
"""
import math
from dataclasses import replace

import pytest
import torch

import diffusion
import pipeline
from autoencoder import MDSA
from config import get_config
from conftest import gaussian_shortcut, gaussian_velocity, randomized
from diffusion import DDPM
from model import VIDEO_PLANES, STDiT, latent_shape
from sampling import Sampling, ddim_step, denoiser_forwards, dpm_step, native_denoiser, sample_latent

SMALL = dict(dit_width=32, dit_depth=2, dit_heads=2, objective="ddpm", shortcut_steps=0)   # a small DDPM denoiser: seconds per run


# ---- seeded sampling, DDIM / DDPM, guidance at scale 1 ----

def test_one_generator_seed_fixes_a_sample():
    cfg = get_config("tiny", **SMALL)
    model, process = randomized(STDiT(cfg)), diffusion.from_config(cfg)
    shape = (2, *latent_shape(cfg))
    known = torch.randn(shape, generator=torch.Generator().manual_seed(9))

    def run(seed, known=None, known_mask=None, **how):               # no `noise`: the start comes from the seed too
        return sample_latent(process, model, shape, Sampling(steps=4, **how), known=known, known_mask=known_mask,
                             generator=torch.Generator().manual_seed(seed))

    for kw in (dict(sampler="ddpm"), dict(sampler="ddim", eta=0.0, known=known, known_mask=VIDEO_PLANES,
                                           conditioning="replace", guidance=0.0),
               dict(sampler="dpm++", known=known, known_mask=~VIDEO_PLANES, conditioning="native", xmodal_cfg=2.0)):
        assert torch.equal(run(3, **kw), run(3, **kw)), kw
        assert not torch.allclose(run(3, **kw), run(4, **kw)), kw


def test_ddim_eta0_is_deterministic_and_ddpm_runs():
    cfg = get_config("tiny", **SMALL)
    model, process = randomized(STDiT(cfg)), diffusion.from_config(cfg)
    shape = (2, *latent_shape(cfg))
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    run = lambda seed, eta: sample_latent(process, model, shape,
                                          Sampling(sampler="ddim", steps=8, eta=eta, xmodal_cfg=1.0),
                                          noise=noise, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(0, 0.0), run(1, 0.0))                      # η=0 ignores the generator
    assert not torch.allclose(run(0, 1.0), run(1, 1.0))               # η=1 does not
    ddpm = sample_latent(process, model, shape, Sampling(sampler="ddpm", steps=10, xmodal_cfg=1.0),
                         noise=noise, generator=torch.Generator().manual_seed(2))
    assert torch.isfinite(ddpm).all() and not torch.equal(ddpm, noise)
    # ancestral DDPM with β̃ is DDIM at η=1 on the same grid and the same noise draws
    ddim1 = sample_latent(process, model, shape, Sampling(sampler="ddim", steps=10, eta=1.0, xmodal_cfg=1.0),
                          noise=noise, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(ddpm, ddim1, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_guidance_scale_one_samples_the_conditional_model(prediction):
    cfg = get_config("tiny", num_classes=3, prediction=prediction, **SMALL)
    model, process = randomized(STDiT(cfg)), diffusion.from_config(cfg)
    x, y = torch.randn(2, *latent_shape(cfg)), torch.tensor([0, 2])
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    guided = sample_latent(process, model, x.shape,
                           Sampling(sampler="ddim", steps=4, eta=0.0, cfg_scale=1.0, xmodal_cfg=1.0), y=y,
                           noise=noise)
    plain = sample_latent(process, always_conditioned(model, y), x.shape,
                          Sampling(sampler="ddim", steps=4, eta=0.0, xmodal_cfg=1.0), noise=noise)
    assert torch.equal(guided, plain)                                 # scale 1 = the conditional model


def always_conditioned(model, y):
    """A label-free wrapper that always conditions on y: the reference for 'scale 1 = conditional'."""
    class Conditioned(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x, t, _y=None):
            return self.inner(x, t, y)
    return Conditioned()


# ---- A2V / V2A by replacement, with reconstruction guidance ----

def test_known_planes_are_replaced_exactly():
    cfg = get_config("tiny", **SMALL)
    model, process = randomized(STDiT(cfg)), diffusion.from_config(cfg)
    shape = (2, *latent_shape(cfg))
    gen = torch.Generator().manual_seed(4)
    known, other = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    video_known = torch.tensor([True, True, True, False, False, False])  # V2A: video planes given
    sample = lambda k: sample_latent(process, model, shape,
                                     Sampling(sampler="ddim", steps=5, eta=0.0, xmodal_cfg=1.0, conditioning="replace", guidance=0.0),
                                     known=k, known_mask=video_known,
                                     generator=torch.Generator().manual_seed(5))
    out = sample(known)
    assert torch.equal(out[:, :, :3], known[:, :, :3])
    assert not torch.allclose(out[:, :, 3:], known[:, :, 3:])
    # the generated audio planes depend on the given video planes (temporal attention sees them)
    assert (sample(other)[:, :, 3:] - out[:, :, 3:]).abs().max() > 1e-3


class VideoFollowsAudio(torch.nn.Module):
    """A toy ε-denoiser that, like our trained tiny model, reads only one direction: its x̂0 of the
    video planes is a copy of the audio planes' x̂0, which never looks at the video. Both are the
    exact posterior mean √ᾱ·x_t of unit-Gaussian data, so deterministic DDIM maps noise to itself."""

    def __init__(self, process):
        super().__init__()
        self.process, self.dummy = process, torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t, y=None):
        ab = self.process._shaped(self.process.alphas_cumprod.to(t.device)[t], x)
        x0 = torch.cat([x[:, :, 3:], x[:, :, 3:]], dim=2) * ab.sqrt()
        return (x - ab.sqrt() * x0) / (1 - ab).sqrt()


@pytest.mark.parametrize("sampler", ["ddim", "dpm++"])
def test_reconstruction_guidance_reaches_the_planes_replacement_cannot(sampler):
    process = DDPM(steps=1000)
    model = VideoFollowsAudio(process)
    shape = (4, 2, 6, 3, 3)
    gen = torch.Generator().manual_seed(6)
    known, noise = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    video_known = torch.tensor([True, True, True, False, False, False])
    miss = lambda w: (sample_latent(process, model, shape,
                                    Sampling(sampler=sampler, steps=20, eta=0.0, xmodal_cfg=1.0, conditioning="replace", guidance=w),
                                    known=known, known_mask=video_known, noise=noise)[:, :, 3:] - known[:, :, :3]).pow(2).mean().item()
    # replacement alone: the audio ignores the given video, so it misses it by ~2 (two unit draws);
    # the gradient through the video's dependence on the audio pulls the audio onto it
    assert miss(0.0) > 1.0
    assert miss(1.0) < 0.05 * miss(0.0)


# ---- native A2V / V2A and cross-modal guidance against the exact conditional of a Gaussian toy ----

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
    Returns ε̂ (0 on clean planes), or v̂ = √ᾱ·ε̂ − √(1−ᾱ)·x̂0 for a v-prediction process."""

    def __init__(self, process, cov):
        super().__init__()
        self.process, self.cov, self.calls = process, cov, []

    def forward(self, x, t, y=None):
        self.calls.append((x.clone(), t.clone()))
        z = x.reshape(x.shape[0], 6).double()
        table = self.process.alphas_cumprod
        if t.dim() == 1:
            ab = table[t][:, None].expand(-1, 6)
        else:
            per_modality = torch.where(t == 0, torch.ones((), dtype=torch.float64), table[t])
            ab = torch.where(VIDEO_PLANES, per_modality[:, :1], per_modality[:, 1:])
        a, s = ab.sqrt(), 1 - ab
        cov_t = a[:, :, None] * self.cov * a[:, None, :] + torch.diag_embed(s)
        x0 = (self.cov @ (a * torch.linalg.solve(cov_t, z))[..., None])[..., 0]
        eps = torch.where(s > 0, (z - a * x0) / s.clamp(min=1e-30).sqrt(), torch.zeros_like(z))
        out = eps if self.process.prediction == "eps" else a * eps - s.sqrt() * x0
        return out.reshape(x.shape).to(x.dtype)


def conditional(cov, given, video_given):
    """Mean and covariance of the free modality given the other's value `given` (3,)."""
    free, known = (slice(3, 6), slice(0, 3)) if video_given else (slice(0, 3), slice(3, 6))
    gain = cov[free, known] @ torch.linalg.inv(cov[known, known])
    return gain @ given, cov[free, free] - gain @ cov[known, free]


@pytest.mark.parametrize("prediction,video_given", [("eps", False), ("v", True)])
def test_native_conditioning_samples_the_exact_conditional(prediction, video_given):
    cov, n = toy_covariance(), 20_000
    process = DDPM(1000, prediction=prediction)
    model = GaussianDenoiser(process, cov)
    given = torch.tensor([1.0, -0.5, 0.8], dtype=torch.float64)
    mask = VIDEO_PLANES if video_given else ~VIDEO_PLANES
    known = torch.zeros(n, 1, 6, 1, 1)
    known[:, 0, mask, 0, 0] = given.float()
    mean, var = conditional(cov, given, video_given)
    out = sample_latent(process, model, known.shape,
                        Sampling(sampler="dpm++", steps=50, eta=0.0, grid="logsnr", xmodal_cfg=1.0, conditioning="native"),
                        known=known, known_mask=mask, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out[:, :, mask], known[:, :, mask])            # the given planes, untouched
    for x, t in model.calls:                                          # ... and clean at t = 0 in every call
        assert torch.equal(x[:, :, mask], known[:, :, mask]) and (t[:, 0 if video_given else 1] == 0).all()
    free = out[:, 0, ~mask, 0, 0].double()
    assert (free.mean(0) - mean).abs().max() < 0.02                   # std error of the mean ≈ 0.003
    torch.testing.assert_close(torch.cov(free.T), var, rtol=0, atol=0.01)   # entries ≈ 0.1-0.2
    # joint sampling of the same model: the marginal, whose variance (1) is far from the conditional
    joint = sample_latent(process, model, known.shape,
                          Sampling(sampler="dpm++", steps=50, eta=0.0, grid="logsnr", xmodal_cfg=1.0),
                          generator=torch.Generator().manual_seed(1))[:, 0, ~mask, 0, 0].double()
    torch.testing.assert_close(torch.cov(joint.T), cov[~mask][:, ~mask], rtol=0, atol=0.05)
    assert (torch.cov(joint.T).diagonal() > 3 * var.diagonal()).all()


def test_native_conditioning_with_ddpm():
    # the stochastic sampler reaches the same conditional
    cov, n = toy_covariance(), 8000
    process = DDPM(1000)
    model = GaussianDenoiser(process, cov)
    given = torch.tensor([1.0, -0.5, 0.8], dtype=torch.float64)
    known = torch.zeros(n, 1, 6, 1, 1)
    known[:, 0, 3:, 0, 0] = given.float()
    mean, var = conditional(cov, given, video_given=False)
    out = sample_latent(process, model, known.shape,
                        Sampling(sampler="ddpm", steps=200, xmodal_cfg=1.0, conditioning="native"), known=known,
                        known_mask=~VIDEO_PLANES, generator=torch.Generator().manual_seed(2))
    free = out[:, 0, :3, 0, 0].double()
    assert (free.mean(0) - mean).abs().max() < 0.03
    torch.testing.assert_close(torch.cov(free.T), var, rtol=0, atol=0.02)


def test_native_conditioning_refuses_partial_modalities():
    process, shape = DDPM(1000), (2, 1, 6, 1, 1)
    model = GaussianDenoiser(process, toy_covariance())
    known = torch.zeros(shape)
    for mask in (torch.tensor([True, False, False, False, False, False]), torch.ones(6, dtype=torch.bool)):
        with pytest.raises(ValueError, match="native"):
            sample_latent(process, model, shape,
                          Sampling(sampler="ddim", steps=2, eta=0.0, xmodal_cfg=1.0, conditioning="native"),
                          known=known, known_mask=mask)
    for bad, name in ((dict(sampler="euler"), "sampler"), (dict(conditioning="both"), "conditioning"),
                      (dict(steps=1001), "steps"), (dict(eta=-1.0), "eta")):
        with pytest.raises(ValueError, match=f"^{name} must be"):     # the message names the setting first
            sample_latent(process, model, shape, Sampling(**bad), known=known, known_mask=VIDEO_PLANES)


def test_cross_modal_guidance_is_one_batched_forward():
    cov = toy_covariance()
    process = DDPM(1000)
    model = GaussianDenoiser(process, cov)
    n, given = 4000, torch.tensor([1.0, -0.5, 0.8], dtype=torch.float64)
    known = torch.zeros(n, 1, 6, 1, 1)
    known[:, 0, 3:, 0, 0] = given.float()
    run = lambda s: sample_latent(process, model, known.shape,
                                  Sampling(sampler="ddim", steps=20, eta=0.0, xmodal_cfg=s, conditioning="native"),
                                  known=known, known_mask=~VIDEO_PLANES,
                                  generator=torch.Generator().manual_seed(3))
    plain = run(1.0)
    assert all(x.shape[0] == n for x, _ in model.calls)               # s = 1: one plain forward per step
    model.calls.clear()
    guided = run(3.0)
    assert len(model.calls) == 20 and all(x.shape[0] == 2 * n for x, _ in model.calls)
    x, t = model.calls[0]
    assert (t[n:, 1] == process.num_timesteps - 1).all() and (t[:n, 1] == 0).all()   # known: pure noise / clean
    assert abs(x[n:, 0, 3:].std().item() - 1.0) < 0.05               # fresh unit noise in place of the audio
    # s > 1 moves the video past the conditional mean, away from the marginal mean 0
    mean, _ = conditional(cov, given, video_given=False)
    along = lambda out: (out[:, 0, :3, 0, 0].double().mean(0) @ mean / (mean @ mean)).item()  # noqa: E731
    assert abs(along(plain) - 1.0) < 0.05 and along(guided) > along(plain) + 0.05


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_cross_modal_and_class_guidance_combine(prediction):
    # three copies in one forward: ε̂(∅k, y) + s·(ε̂(k, y) − ε̂(∅k, y)) + (g − 1)·(ε̂(k, y) − ε̂(k, ∅))
    cfg = get_config("tiny", num_classes=3, prediction=prediction, **SMALL)
    model, process = randomized(STDiT(cfg)), diffusion.from_config(cfg)
    gen = torch.Generator().manual_seed(5)
    shape = (2, *latent_shape(cfg))
    x, fresh = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    t, y = torch.tensor([300, 800]), torch.tensor([0, 2])
    mask = VIDEO_PLANES.reshape(1, 1, 6, 1, 1).expand(shape)
    s, g = 2.5, 4.0

    def native(scale):
        """The native denoiser with x itself as the known latent and `fresh` as its noise."""
        how = Sampling(cfg_scale=g, xmodal_cfg=scale, conditioning="native").for_model(process)
        return native_denoiser(process, model, how, y, lambda: fresh, x, mask)

    # `level` (800) only decides whether cross-modal guidance acts, at every level here, so the two
    # clips may be at different t
    eps = native(s)(x, t, 800)
    t_c = torch.stack([torch.zeros_like(t), t], dim=1)
    t_u = torch.stack([torch.full_like(t, 999), t], dim=1)
    x_u = torch.where(mask, fresh, x)
    e = lambda xx, tt, yy: process.as_prediction(model(xx, tt, yy), xx, tt)  # noqa: E731
    e_c, e_u, e_n = e(x, t_c, y), e(x_u, t_u, y), e(x, t_c, torch.full_like(y, 3))
    free = ~mask
    torch.testing.assert_close(eps[free], (e_u + s * (e_c - e_u) + (g - 1) * (e_c - e_n))[free],
                               rtol=1e-4, atol=1e-5)
    only_class = native(1.0)(x, t, 800)
    torch.testing.assert_close(only_class[free], (e_n + g * (e_c - e_n))[free], rtol=1e-4, atol=1e-5)
    out = sample_latent(process, model, shape,
                        Sampling(sampler="dpm++", steps=4, eta=0.0, cfg_scale=g, xmodal_cfg=s, conditioning="native"),
                        y=y, known=x, known_mask=VIDEO_PLANES, generator=torch.Generator().manual_seed(6))
    assert torch.isfinite(out).all() and torch.equal(out[:, :, VIDEO_PLANES], x[:, :, VIDEO_PLANES])


def test_joint_cross_modal_guidance_strengthens_the_dependence():
    """Joint sampling with xmodal_cfg s: each modality pushed away from what it makes with its
    partner at pure noise. s = 1 is plain joint sampling; s > 1 ties the modalities tighter than the
    data does (a larger cross-covariance), as a label's guidance sharpens p(x | y)."""
    cov, n = toy_covariance(), 20_000
    process = DDPM(1000)
    model = GaussianDenoiser(process, cov)
    shape = (n, 1, 6, 1, 1)

    def cross(s):
        out = sample_latent(process, model, shape,
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


# ---- DPM-Solver++(2M) against the exact probability-flow ODE of Gaussian data ----

def gaussian_eps(process, sd):
    """The exact ε̂ of x0 ~ N(0, sd²·I): x_t ~ N(0, ᾱ·sd² + 1 − ᾱ), so ε̂ = √(1−ᾱ)·x_t / (ᾱ·sd² + 1 − ᾱ)."""
    def model(x, t, y=None):
        ab = process.alphas_cumprod[t].reshape(-1, *[1] * (x.dim() - 1))
        return ((1 - ab).sqrt() / (ab * sd ** 2 + 1 - ab) * x.double()).to(x.dtype)
    return model


@pytest.mark.parametrize("sd,grid", [(0.5, "logsnr"), (2.0, "logsnr"), (0.5, "time"), (2.0, "time")])
def test_dpm_solver_follows_the_exact_ode(sd, grid):
    # The probability-flow ODE maps a Gaussian to a Gaussian by scaling: x_t/√(ᾱ·sd² + 1 − ᾱ) stays
    # constant along it, so from x at t = 999 the clean end point is sd·x/√(ᾱ_999·sd² + 1 − ᾱ_999).
    process = DDPM(1000)
    model = gaussian_eps(process, sd)
    noise = torch.randn(4000, 1, 6, 1, 1, generator=torch.Generator().manual_seed(0))  # a scaling: few clips do
    ab = process.alphas_cumprod[-1].item()
    exact = sd * noise / (ab * sd ** 2 + 1 - ab) ** 0.5

    def miss(sampler, steps):
        out = sample_latent(process, model, noise.shape,
                            Sampling(sampler=sampler, steps=steps, eta=0.0, grid=grid, xmodal_cfg=1.0),
                            noise=noise)
        return ((out - exact).norm() / exact.norm()).item()

    dpm, ddim = miss("dpm++", 20), miss("ddim", 20)
    assert dpm < ddim / 2                                             # second order against first
    if grid == "logsnr":                                              # 20 steps: the variance within 3%
        assert dpm < 0.015
    assert miss("dpm++", 1000) < 1e-3 and miss("ddim", 1000) < 5e-3   # both converge to the ODE


def test_dpm_solver_variance_converges_at_second_order():
    process, sd = DDPM(1000), 0.5
    model = gaussian_eps(process, sd)
    noise = torch.randn(200_000, 1, 6, 1, 1, generator=torch.Generator().manual_seed(1))
    var = lambda steps: sample_latent(process, model, noise.shape,
                                      Sampling(sampler="dpm++", steps=steps, eta=0.0, grid="logsnr", xmodal_cfg=1.0),
                                      noise=noise).var().item() / sd ** 2
    v20, v40 = var(20), var(40)
    assert abs(v20 - 1) < 0.035 and abs(v40 - 1) < 0.01               # halving h quarters the error
    assert abs(v40 - 1) < abs(v20 - 1) / 3


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_dpm_solver_with_labels_and_replacement(prediction):
    cfg = get_config("tiny", num_classes=3, prediction=prediction, **SMALL)
    model, process = randomized(STDiT(cfg)), diffusion.from_config(cfg)
    shape = (2, *latent_shape(cfg))
    gen = torch.Generator().manual_seed(7)
    noise, known = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    y = torch.tensor([0, 2])
    a = sample_latent(process, model, shape,
                      Sampling(sampler="dpm++", steps=6, eta=0.0, cfg_scale=3.0, xmodal_cfg=1.0), y=y,
                      noise=noise)
    b = sample_latent(process, model, shape,
                      Sampling(sampler="dpm++", steps=6, eta=0.0, cfg_scale=1.0, xmodal_cfg=1.0), y=y,
                      noise=noise)
    assert torch.isfinite(a).all() and (a - b).abs().max() > 1e-3     # the guidance scale acts
    out = sample_latent(process, model, shape,
                        Sampling(sampler="dpm++", steps=6, eta=0.0, xmodal_cfg=1.0, conditioning="replace", guidance=2.0),
                        known=known, known_mask=VIDEO_PLANES, generator=torch.Generator().manual_seed(8))
    assert torch.equal(out[:, :, VIDEO_PLANES], known[:, :, VIDEO_PLANES]) and torch.isfinite(out).all()


def test_dpm_solver_sde_step_is_ddpm_posterior_step():
    # At η = 1 a first-order SDE-DPM-Solver++ step (no history yet) is DDPM's posterior step: the
    # same mean and the same noise scale, so the same x from the same draw, at any step size.
    process = DDPM(1000)
    x, eps, z = torch.randn(3, 1000, generator=torch.Generator().manual_seed(4))
    for t, t_prev in ((999, 700), (600, 400), (50, 0)):
        sde_mean, sde_sd, _ = dpm_step(process, x, eps, t, t_prev, None, Sampling(eta=1.0))
        ddpm_mean, ddpm_sd = ddim_step(process, x, eps, t, t_prev, Sampling(sampler="ddpm", eta=0.0))  # ddpm: η = 1
        torch.testing.assert_close(sde_mean, ddpm_mean, rtol=1e-5, atol=1e-6)
        assert sde_sd == pytest.approx(ddpm_sd, rel=1e-5) and sde_sd > 0
        torch.testing.assert_close(sde_mean + sde_sd * z, ddpm_mean + ddpm_sd * z, rtol=1e-5, atol=1e-6)


def test_dpm_solver_sde_samples_the_data_distribution():
    # Stochastic steps do not follow one trajectory, so the check is on the distribution: with many
    # steps the SDE form recovers the data's variance; with η = 0 at the same steps, so does the ODE.
    process, sd = DDPM(1000), 0.5
    model = gaussian_eps(process, sd)
    var = lambda eta: sample_latent(process, model, (100_000, 1, 6, 1, 1),
                                    Sampling(sampler="dpm++", steps=250, eta=eta, grid="logsnr", xmodal_cfg=1.0),
                                    generator=torch.Generator().manual_seed(5)).var().item()
    assert abs(var(1.0) / sd ** 2 - 1) < 0.01 and abs(var(0.0) / sd ** 2 - 1) < 0.01


# ---- rectified flow's solvers against closed forms ----

@pytest.mark.parametrize("sampler,order", [("euler", 1), ("dpm++", 2)])
def test_flow_solvers_converge_at_their_order(sampler, order):
    # The flow ODE maps N(0, 1) at t = 1 to N(0, sd²) at t = 0 by scaling: x_0 = sd·x_1 exactly.
    flow, sd = diffusion.Flow(), 0.5
    noise = torch.randn(2000, 1, 6, 1, 1, generator=torch.Generator().manual_seed(0)).double()
    miss = lambda steps: ((sample_latent(flow, gaussian_velocity(sd), noise.shape,
                                         Sampling(sampler, steps, eta=0.0, xmodal_cfg=1.0), noise=noise).double()
                           - sd * noise).norm() / (sd * noise).norm()).item()
    # halving the step divides the error by 2^order; DPM-Solver++ reaches its order late on a grid
    # uniform in t (its λ-step into the lowest level, log 2, does not shrink), so from 80 steps on
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
    flow, model = diffusion.Flow(mix=(0.3, 0.35, 0.35)), FlowGaussianDenoiser(cov)
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


# ---- the noise-process contract, and one sampling request from settings to clips ----

def test_each_process_fills_the_contract():
    # Both processes define every method of NoiseProcess's contract (an abstract class refuses a
    # process that misses one) and hold their levels as they say: DDPM integer timesteps, flow
    # float times; a grid ends at pure noise and takes at most max_steps steps.
    class Partial(diffusion.NoiseProcess):
        def draw_t(self, shape, device):
            return torch.zeros(shape)
    with pytest.raises(TypeError, match="abstract"):
        Partial()
    for process, kind in ((DDPM(1000, mix=(0.5, 0.25, 0.25)), int), (diffusion.Flow(shift=3.0), float)):
        grid = process.levels(10)
        assert all(type(level) is kind for level in grid) and grid == sorted(grid)
        assert grid[-1] == process.pure_noise and process.share_of(process.level_at(0.5)) == pytest.approx(0.5)
        t = torch.full((2,), grid[4], dtype=process.level_dtype)
        assert process.model_time(t).shape == (2,)
        assert Sampling(steps=process.max_steps).for_model(process).steps == process.max_steps
        with pytest.raises(ValueError, match="^steps must be"):
            Sampling(steps=process.max_steps + 1).for_model(process)


def test_one_request_resolves_its_settings_once(monkeypatch):
    # The caller resolves a Sampling (for_model); whatever it passes it to takes it as it is. An
    # unresolved one is resolved by the entry point it reaches first, once; a `replace` of a
    # resolved one is unresolved again, so a changed choice is checked again.
    cfg = get_config("tiny", **SMALL)
    model, process = randomized(STDiT(cfg)), diffusion.from_config(cfg)
    calls, resolve = [], Sampling.for_model
    monkeypatch.setattr(Sampling, "for_model", lambda self, p: calls.append(self) or resolve(self, p))
    how = Sampling(steps=2)
    assert not how.resolved and how.for_model(process).resolved and len(calls) == 1
    shape = (1, *latent_shape(cfg))
    for given, expected in ((how, 1), (how.for_model(process), 0)):
        calls.clear()
        sample_latent(process, model, shape, given, known=torch.zeros(shape), known_mask=VIDEO_PLANES)
        assert len(calls) == expected
    from dataclasses import replace
    assert not replace(how.for_model(process), steps=3).resolved


def heldout_case(num_classes=3):
    """Models (a random MDSA and STDiT at the tiny sizes) and three held-out BounceClick items."""
    from data import BounceClick
    cfg = get_config("tiny", num_classes=num_classes, ae_channels=16, **SMALL)
    torch.manual_seed(0)
    m = pipeline.Models(cfg, MDSA(cfg).eval(), randomized(STDiT(cfg)), diffusion.from_config(cfg), 0.7)
    held_out = BounceClick(cfg, size=3, seed=5)
    return m, [held_out[i] for i in range(3)]


def test_generate_heldout_conditions_each_clip_on_its_own_item(monkeypatch):
    m, items = heldout_case()
    how = Sampling(steps=2)
    calls, resolve = [], Sampling.for_model
    monkeypatch.setattr(Sampling, "for_model", lambda self, p: calls.append(self) or resolve(self, p))
    gen = torch.Generator().manual_seed(0)
    got = {mode: list(pipeline.generate_heldout(m, items, how, mode, generator=gen, batch_size=2))
           for mode in ("joint", "a2v", "v2a")}
    assert len(calls) == 3                                            # once a request, not once a batch
    for mode, batches in got.items():
        assert [len(video) for video, _ in batches] == [2, 1], mode
        for video, wave in batches:
            assert video.dtype == wave.dtype == torch.float32 and video.device.type == wave.device.type == "cpu"
            assert video.shape[1:] == items[0]["video"].shape and wave.shape[1:] == items[0]["wave"].shape
    waves = torch.cat([wave for _, wave in got["a2v"]])
    videos = torch.cat([video for video, _ in got["v2a"]])
    assert torch.equal(waves, torch.stack([it["wave"] for it in items]))       # a2v keeps each item's sound
    assert torch.equal(videos, torch.stack([it["video"] for it in items]))     # v2a keeps each item's frames
    # the same draws as `generate` batch by batch from one generator: joint, then a2v, then v2a
    gen, how = torch.Generator().manual_seed(0), how.for_model(m.process)
    for mode, batches in got.items():
        for start, (video, wave) in zip((0, 2), batches):
            chunk = items[start:start + 2]
            given = {} if mode == "joint" else dict(
                cond_video=torch.stack([it["video"] for it in chunk]), cond_wave=torch.stack([it["wave"] for it in chunk]),
                label=torch.stack([it["label"] for it in chunk]))
            expected = pipeline.generate(m, len(chunk), how, mode=mode, generator=gen, **given)
            assert torch.equal(video, expected[0]) and torch.equal(wave, expected[1]), (mode, start)


# ---- shortcut steps against closed forms ----

@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_shortcut_sampler_lands_on_the_exact_ode_solution(steps):
    """A model that outputs the exact average velocity of each step (Gaussian data) takes the
    shortcut sampler (η = 0) from x_1 to the ODE's x_0 = sd·x_1 in any number of steps, one
    included; the same model's instantaneous velocity under Euler misses it by far at 1 step.
    Native A2V reaches it too on its free planes, the known ones kept."""
    flow, sd = diffusion.Flow(shift=2.0, mix=(0.3, 0.35, 0.35)), 0.5
    flow.shortcut = True
    noise = torch.randn(64, 1, 6, 1, 1, generator=torch.Generator().manual_seed(0)).double()
    model = gaussian_shortcut(sd, flow.shift)
    how = Sampling("shortcut", steps, eta=0.0, xmodal_cfg=1.0)
    out = sample_latent(flow, model, noise.shape, how, noise=noise).double()
    torch.testing.assert_close(out, sd * noise, rtol=1e-5, atol=1e-6)   # float32 sampling
    known = torch.randn(noise.shape, generator=torch.Generator().manual_seed(1)).double()
    a2v = sample_latent(flow, model, noise.shape, replace(how, conditioning="native"), noise=noise,
                        known=known, known_mask=~VIDEO_PLANES).double()
    torch.testing.assert_close(a2v[:, :, VIDEO_PLANES], sd * noise[:, :, VIDEO_PLANES], rtol=1e-5, atol=1e-6)   # float32 sampling
    assert torch.equal(a2v[:, :, ~VIDEO_PLANES], known[:, :, ~VIDEO_PLANES])
    if steps == 1:
        euler = sample_latent(flow, gaussian_velocity(sd), noise.shape, replace(how, sampler="euler"), noise=noise)
        assert (euler.double() - sd * noise).abs().max() > 0.1


def test_shortcut_sampler_needs_a_model_taught_its_steps():
    """Sampler shortcut only for a denoiser trained with shortcut steps, and only at the step sizes it
    was taught: 8 steps unless told, one call each."""
    flow = diffusion.Flow(shift=2.0)
    with pytest.raises(ValueError, match="sampler shortcut needs a denoiser trained with shortcut steps"):
        Sampling("shortcut", 4).for_model(flow)
    flow.shortcut = True
    with pytest.raises(ValueError, match="steps must be one of 1, 2, 4, 8, 16, 32, 64 for sampler shortcut"):
        Sampling("shortcut", 3).for_model(flow)
    with pytest.raises(ValueError, match="sampler must be one of dpm\\+\\+, ddim, ddpm"):
        Sampling("shortcut", 4).for_model(DDPM(1000))
    how = Sampling("shortcut").for_model(flow)
    assert (how.sampler, how.steps, denoiser_forwards(flow, how, "joint"), denoiser_forwards(flow, how, "a2v")) == ("shortcut", 8, 8, 8)

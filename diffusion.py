"""
Diffusion over the stacked latent: PAPER.md §5.

  schedules      linear β 1e-4 → 0.02 (DDPM) and cosine (Nichol & Dhariwal)          [paper; ours]
                 DDPM with 1000 steps                                                        [ours]
  q_sample       x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε, one level per clip or per modality            [DDPM]
  loss           MSE on ε (DDPM) or on v = √ᾱ·ε − √(1−ᾱ)·x0 (Salimans & Ho)              [DDPM; ours]
                 over a mixture of noise-level pairs (t_v, t_a): equal, independent, or one
                 modality clean                      [ours, after UniDiffuser and AVDiT's mixture]
  Sampling       every sampling choice with its default, in one place (sample.py, evaluate.py,
                 train.py's previews and pipeline.generate read it); a checkpoint's noise-level
                 mixture decides the choices it leaves open                                  [ours]
  solve          the reverse process as a plain loop over a denoiser function f(x, t) → ε̂:
                 DDPM ancestral and DDIM (η) on a respaced grid, DPM-Solver++(2M)
                 (Lu et al. 2022)                                                            [ours]
  *_denoiser     f for each way to sample, where conditioning and guidance live:
                 joint: classifier-free guidance on the label, and cross-modal guidance, each
                 stream against the other at pure noise                        [ours, after UniDiffuser]
                 A2V / V2A "native": the known modality clean at t = 0, with cross-modal guidance
                 against it at pure noise                                      [ours, after UniDiffuser]
                 A2V / V2A "replace": the known planes re-noised at every step     [ours, MM-Diffusion]
                 with reconstruction guidance on the free planes                 [ours, Ho et al. 2022]

The model is any callable `model(x_t, t, y) → ε̂` (or v̂) with the shape of x_t (model.STDiT), where
t is `B` (one level for every plane) or `B×2` (t_v for the video planes, t_a for the audio planes).
It is always called with ORIGINAL timestep indices 0..num_timesteps−1, also on a respaced grid, so
one trained network serves every sampler and step count. Samplers only see ε̂: a v̂ is converted by
`predict_eps`, so both parameterisations share every sampling line.

Conventions: the schedule tables are float64 (ᾱ near 1e-5 at t≈999 needs the digits), and their
entries are cast to the latent's dtype only at use. x0 predictions are NOT clipped: the latents are
scaled to unit variance, not bounded to [-1, 1] like pixels, so there is no range to clip to.
"""
import math
from dataclasses import dataclass, replace
from typing import Literal, Optional, get_args

import torch
import torch.nn.functional as F
from tqdm import tqdm

from model import VIDEO_PLANES

# The allowed values of the sampling choices (each listed once, here; `Sampling` below holds the defaults).
Sampler = Literal["dpm++", "ddim", "ddpm"]
Grid = Literal["time", "logsnr"]
Conditioning = Literal["native", "replace"]
SAMPLERS = get_args(Sampler)
# Denoiser calls per clip each sampler takes unless told otherwise. DPM-Solver++ at 50 syncs best;
# at 20 (`--steps 20`) it stays close to DDIM at 50 for 2.5× fewer calls (RESULTS.md, "Which sampler
# and how many steps?"). Ancestral sampling, first order with the most noise, needs the most.
DEFAULT_STEPS = {"dpm++": 50, "ddim": 50, "ddpm": 250}

# ----------------------------------------------------------------------------------------------
# Noise schedules and sampling grids
# ----------------------------------------------------------------------------------------------


def make_betas(schedule, steps):
    """β_1..β_num_timesteps as a float64 tensor of length `steps` (= num_timesteps)."""
    if schedule == "linear":
        # DDPM's 1e-4 → 0.02 at 1000 steps; scaled by 1000/steps so other counts keep the end-point ᾱ.
        scale = 1000.0 / steps
        return torch.linspace(scale * 1e-4, scale * 0.02, steps, dtype=torch.float64)
    if schedule == "cosine":
        # ᾱ(u) = f(u)/f(0), f(u) = cos²((u + s)/(1 + s)·π/2) with u = t/num_timesteps; β clipped at
        # 0.999 so the last step (where ᾱ → 0) does not divide by zero.
        s = 0.008
        u = torch.arange(steps + 1, dtype=torch.float64) / steps
        f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
        alphas_cumprod = f / f[0]
        return (1 - alphas_cumprod[1:] / alphas_cumprod[:-1]).clamp(max=0.999)
    raise ValueError(f"diffusion: unknown schedule {schedule!r}; choose 'linear' or 'cosine'")


def respaced_timesteps(num_steps, total):
    """`num_steps` timesteps evenly spaced over 0..total−1, both ends included, ascending."""
    if not 1 <= num_steps <= total:
        raise ValueError(f"diffusion: sampling steps must be in 1..{total}, got {num_steps}")
    if num_steps == 1:
        return torch.tensor([total - 1])                              # one step from pure noise
    # spacing (total−1)/(num_steps−1) ≥ 1, so rounding never merges two steps
    return torch.linspace(0, total - 1, num_steps, dtype=torch.float64).round().long()


def logsnr_timesteps(num_steps, alphas_cumprod):
    """`num_steps` timesteps, ascending, both ends included, whose log-SNR λ = log(√ᾱ/√(1−ᾱ)) is as
    evenly spread as integer timesteps allow: the grid of DPM-Solver (Lu et al. 2022), which
    puts more steps at low noise than a grid uniform in t."""
    total = len(alphas_cumprod)
    if not 1 <= num_steps <= total:
        raise ValueError(f"diffusion: sampling steps must be in 1..{total}, got {num_steps}")
    if num_steps == 1:
        return torch.tensor([total - 1])
    lam = 0.5 * (alphas_cumprod.log() - (1 - alphas_cumprod).log())  # decreasing in t
    targets = torch.linspace(lam[0].item(), lam[-1].item(), num_steps, dtype=torch.float64)
    ts = (lam[None, :] - targets[:, None]).abs().argmin(dim=1).tolist()  # nearest integer t, ascending
    # where λ is steep (near t = 0) two targets can round to one t: push them apart, keeping both ends
    ts[0], ts[-1] = 0, total - 1
    for i in range(1, num_steps - 1):                                 # upwards, then down from the top end
        ts[i] = max(ts[i], ts[i - 1] + 1)
    for i in range(num_steps - 2, 0, -1):
        ts[i] = min(ts[i], ts[i + 1] - 1)
    return torch.tensor(ts)


# ----------------------------------------------------------------------------------------------
# The forward process and its loss
# ----------------------------------------------------------------------------------------------


class Diffusion:
    """A fixed forward process, its training loss, and what every sampler reads from it (the ᾱ
    tables, ε̂ from the model's output, the sampling grid). Holds tables only, no weights; the
    reverse process is `solve` below.

    Diffusion(steps=1000, schedule="linear", prediction="eps", mix=(1, 0, 0))
      steps       num_timesteps, the training timesteps 0..num_timesteps−1
      prediction  what the model outputs: "eps" or "v"
      mix         weights (equal, independent, clean) of the noise-level pairs `loss` draws, made to
                  sum to 1; (1, 0, 0) is one level per clip, drawn exactly as plain DDPM does.
    """

    def __init__(self, steps=1000, schedule="linear", prediction="eps", mix=(1.0, 0.0, 0.0)):
        if prediction not in ("eps", "v"):
            raise ValueError(f"diffusion: unknown prediction {prediction!r}; choose 'eps' or 'v'")
        mix = tuple(float(w) for w in mix)
        if len(mix) != 3 or min(mix) < 0 or sum(mix) <= 0:
            raise ValueError(f"diffusion: mix must be three non-negative weights (equal, independent, clean) "
                             f"with a positive sum, got {mix}")
        self.num_timesteps = steps
        self.schedule, self.prediction = schedule, prediction
        self.mix = tuple(w / sum(mix) for w in mix)
        self.betas = make_betas(schedule, steps)                     # num_timesteps, float64
        self.alphas_cumprod = torch.cumprod(1 - self.betas, dim=0)   # ᾱ_t, num_timesteps, float64
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1 - self.alphas_cumprod).sqrt()

    @classmethod
    def from_config(cls, cfg):
        return cls(steps=cfg.diffusion_steps, schedule=cfg.schedule, prediction=cfg.prediction,
                   mix=(cfg.mix_equal, cfg.mix_independent, cfg.mix_clean))

    @staticmethod
    def _at(table, t, x):
        """table[t] for a batch `t: B` as a `B×1×…×1` tensor of x's dtype and device."""
        values = table.to(t.device)[t].to(x.dtype)
        return values.reshape(-1, *([1] * (x.dim() - 1)))

    @staticmethod
    def _per_plane(values, x):
        """Per-modality `B×2` values (video, audio) → `B×1×P×1×…` over x's plane axis (dim 2)."""
        if x.dim() < 3 or x.shape[2] != len(VIDEO_PLANES):
            raise ValueError(f"diffusion: a per-modality t needs the {len(VIDEO_PLANES)}-plane latent "
                             f"B×c×{len(VIDEO_PLANES)}×L×L, got {tuple(x.shape)}")
        video = VIDEO_PLANES.to(values.device)[None, :]
        planes = torch.where(video, values[:, :1], values[:, 1:])     # B×P
        return planes.reshape(planes.shape[0], 1, planes.shape[1], *([1] * (x.dim() - 3)))

    def _coef(self, table, t, x):
        """table[t] shaped to broadcast over x: `B×1×…×1` for t `B`, `B×1×P×1×…` for t `B×2`."""
        if t.dim() == 1:
            return self._at(table, t, x)
        return self._per_plane(table.to(t.device)[t].to(x.dtype), x)

    def _coefs(self, t, x):
        """(√ᾱ_t, √(1−ᾱ_t)), each shaped as `_coef` shapes it."""
        return self._coef(self.sqrt_alphas_cumprod, t, x), self._coef(self.sqrt_one_minus_alphas_cumprod, t, x)

    # ---- forward process and training ----

    def q_sample(self, x0, t, noise):
        """x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε, with t `B` or per modality `B×2`: the signal shrinks by √ᾱ_t
        while noise fills the variance back to 1, so a unit-variance x0 gives a unit-variance x_t."""
        signal, spread = self._coefs(t, x0)
        return signal * x0 + spread * noise

    def draw_levels(self, batch, device):
        """Per-clip noise-level pairs from the mixture: (t `B×2` long, clean `B×2` bool).

        equal        t_v = t_a ~ U{0..num_timesteps−1}: the joint generation sampling starts from
        independent  t_v, t_a independently uniform: each modality learns to read the other at any level
        clean        one modality (each with probability ½) clean, its t = 0; the other uniform:
                     A2V and V2A as `native_denoiser` samples them
        """
        kind = torch.rand(batch, device=device)
        t = torch.randint(0, self.num_timesteps, (batch, 2), device=device)
        video_clean = torch.rand(batch, device=device) < 0.5
        equal = kind < self.mix[0]
        one_clean = kind >= self.mix[0] + self.mix[1]
        t[:, 1] = torch.where(equal, t[:, 0], t[:, 1])
        clean = torch.stack([one_clean & video_clean, one_clean & ~video_clean], dim=1)
        return t.masked_fill(clean, 0), clean

    def loss(self, model, x0, y=None, *, t=None, noise=None, clean=None):
        """MSE of the model's ε̂ (or v̂) over the noised planes: a scalar.

        x0 `B×c×P×L×L`. Without `t`, the levels come from the mixture `self.mix` (`draw_levels`); with
        mix (1, 0, 0) that is t ~ U{0..num_timesteps−1} per clip, drawn as plain DDPM draws it. `t`
        (`B` or `B×2`), `noise` and `clean` (`B×2` bool: that modality given as x0 itself at t = 0)
        may be fixed (tests). A clean modality's planes are left out of the mean: there is nothing
        to denoise in them.

        In terms of the x0 error, ε-MSE weighs step t by SNR_t = ᾱ/(1−ᾱ) and v-MSE by 1 + SNR_t: at
        the noisy steps, where a clip's layout (when the disc hits a wall, when the click sounds) is
        decided, v gives 10-1000× the weight ε does."""
        if t is None:
            if self.mix[1] == 0 and self.mix[2] == 0:                 # equal levels only: one t per clip
                t = torch.randint(0, self.num_timesteps, (x0.shape[0],), device=x0.device)
            else:
                t, clean = self.draw_levels(x0.shape[0], x0.device)
        if noise is None:
            noise = torch.randn_like(x0)
        if t.dim() == 1 and clean is None:                            # one level for all planes
            x_t, clean_planes = self.q_sample(x0, t, noise), None
        else:
            if t.dim() == 1:
                t = torch.stack([t, t], dim=1)
            if clean is None:
                clean = torch.zeros_like(t, dtype=torch.bool)
            t = t.masked_fill(clean, 0)                               # a clean modality is announced as t = 0
            clean_planes = self._per_plane(clean, x0)                 # B×1×P×1×1 bool
            x_t = torch.where(clean_planes, x0, self.q_sample(x0, t, noise))  # clean planes are x0 itself
        out = model(x_t, t, y)
        if self.prediction == "v":
            signal, spread = self._coefs(t, x0)
            target = signal * noise - spread * x0                     # v = √ᾱ·ε − √(1−ᾱ)·x0
        else:
            target = noise
        if clean_planes is None:
            return F.mse_loss(out.float(), target.float())          # in float32 under bf16 autocast
        weight = (~clean_planes).float()
        err = (out.float() - target.float()).pow(2) * weight
        return err.sum() / weight.expand_as(err).sum().clamp(min=1.0)  # the mean over noised elements

    # ---- what the samplers read ----

    def predict_eps(self, model, x, t, y=None, cfg_scale=1.0):
        """ε̂ with classifier-free guidance: out_u + s·(out_c − out_u), both from one batched forward.
        Without labels, or at s = 1 (where the formula is just out_c), a single plain forward. A v̂ is
        turned into ε̂ = √(1−ᾱ)·x_t + √ᾱ·v̂ (the guidance combination is linear, so either order).
        t is `B`, or `B×2` per modality."""
        if y is None or cfg_scale == 1.0:
            out = model(x, t, y)
        else:
            null = torch.full_like(y, model.null_label)
            out_cond, out_uncond = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null])).chunk(2)
            out = out_uncond + cfg_scale * (out_cond - out_uncond)
        return self.as_eps(out, x, t)

    def as_eps(self, out, x, t):
        """The model's output as ε̂: unchanged for ε-prediction, √(1−ᾱ)·x_t + √ᾱ·v̂ for v."""
        if self.prediction == "v":
            signal, spread = self._coefs(t, x)
            out = spread * x + signal * out
        return out

    def sampling_timesteps(self, steps, grid="time"):
        """The ascending sampling grid: `steps` timesteps uniform in t ("time") or in log-SNR ("logsnr")."""
        if grid == "time":
            return respaced_timesteps(steps, self.num_timesteps)
        if grid == "logsnr":
            return logsnr_timesteps(steps, self.alphas_cumprod)
        raise ValueError(f"diffusion: unknown grid {grid!r}; choose 'time' or 'logsnr'")


# ----------------------------------------------------------------------------------------------
# How to sample: the one owner of the defaults
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sampling:
    """Every choice of how a clip is sampled, with the defaults that sample.py, evaluate.py,
    train.py's previews and pipeline.generate all read from here. None means "as the checkpoint
    was trained for": `for_model` decides it from the denoiser's noise-level mixture."""
    sampler: Sampler = "dpm++"         # the solver: DPM-Solver++(2M), DDIM, or DDPM's ancestral sampler
    steps: Optional[int] = None        # denoiser calls per run; auto = the sampler's own (dpm++ 50, ddim 50, ddpm 250)
    eta: float = 1.0                   # ddim / dpm++ noise: 1 = DDPM-like (syncs better), 0 = deterministic
    grid: Grid = "time"                # timesteps spread uniformly in t, or in log-SNR
    cfg_scale: float = 1.0             # classifier-free guidance scale on the class label (1 = none)
    xmodal_cfg: Optional[float] = None  # cross-modal guidance scale of joint and native a2v / v2a (1 = none);
                                        # auto = 4 for a denoiser trained with independent or one-clean
                                        # noise levels, else 1 (it never saw a partner at another level)
    resample_audio: Optional[bool] = None  # joint: then re-draw the audio given the finished video, as v2a
                                           # does (a Gibbs step); auto = on for the same denoisers as xmodal_cfg
    conditioning: Optional[Conditioning] = None  # a2v / v2a: the given planes clean at t = 0 ("native") or
                                                 # re-noised every step ("replace"); auto = native for a
                                                 # denoiser trained with one modality clean, else replace
    guidance: float = 16.0             # replace: reconstruction guidance weight (0 = replacement alone)

    def for_model(self, diffusion) -> "Sampling":
        """Every None decided by what the denoiser was trained on, checked. A denoiser trained with
        independent or one-clean levels (diffusion.mix) has seen one modality beside the other at
        another level, which cross-modal guidance and the audio re-draw ask of it."""
        for name, allowed in (("sampler", Sampler), ("grid", Grid), ("conditioning", Conditioning)):
            value = getattr(self, name)
            if value not in get_args(allowed) and not (name == "conditioning" and value is None):
                raise ValueError(f"{name} must be one of {', '.join(get_args(allowed))}, not {value!r}")
        per_modality = diffusion.mix[1] > 0 or diffusion.mix[2] > 0
        how = replace(
            self, steps=self.steps or DEFAULT_STEPS[self.sampler],
            xmodal_cfg=self.xmodal_cfg if self.xmodal_cfg is not None else 4.0 if per_modality else 1.0,
            resample_audio=self.resample_audio if self.resample_audio is not None else per_modality,
            conditioning=self.conditioning or ("native" if diffusion.mix[2] > 0 else "replace"))
        if not 1 <= how.steps <= diffusion.num_timesteps:    # messages start with the setting's name
            raise ValueError(f"steps must be in 1..{diffusion.num_timesteps} (the training timesteps), not {how.steps}")
        for name in ("eta", "guidance", "cfg_scale", "xmodal_cfg"):
            if getattr(how, name) < 0:
                raise ValueError(f"{name} must be ≥ 0, not {getattr(how, name)}")
        return how


# ----------------------------------------------------------------------------------------------
# The reverse process: a solver over a denoiser function
# ----------------------------------------------------------------------------------------------


def solve(diffusion, denoiser, x, how, randn, progress=False):
    """x at t = num_timesteps−1 → x̂0 on `how.steps` timesteps of `how.grid`: the paper's sampler.

    denoiser(x, t) → ε̂, for x `B×c×P×L×L` float32 at level t `B` (every plane the solver moves is
    at t; a denoiser that holds some planes elsewhere, given clean or a partner at pure noise, tells
    the model so itself). Each step is one call and one update, DDPM / DDIM (`ddim_step`) or
    DPM-Solver++(2M) (`dpm_step`); randn() draws the steps' fresh noise."""
    timesteps = diffusion.sampling_timesteps(how.steps, how.grid).tolist()
    history = None                                                # dpm++: the previous x̂0 and step in λ
    for i in tqdm(range(len(timesteps) - 1, -1, -1), disable=not progress, desc=how.sampler):
        t, t_prev = timesteps[i], (timesteps[i - 1] if i > 0 else None)  # t_prev None: the step to x0
        eps = denoiser(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long))
        if how.sampler == "dpm++":
            x, history = dpm_step(diffusion, x, eps, t, t_prev, history, how.eta, randn)
        else:
            x = ddim_step(diffusion, x, eps, t, t_prev, how.sampler, how.eta, randn)
    return x


@torch.no_grad()
def sample_latent(diffusion, model, shape, how=Sampling(), *, y=None, known=None, known_mask=None,
                  noise=None, generator=None, progress=False):
    """Draw x0 of `shape` (B×c×P×L×L) from noise; returns float32.

    how       a Sampling (its None fields follow the denoiser: `Sampling.for_model`).
    y         class labels `B` for classifier-free guidance at how.cfg_scale.
    known, known_mask  A2V / V2A: `known` a clean latent of `shape`; `known_mask` a bool over the
              P plane axis (length P) or broadcastable to `shape`. How the model is told about the
              known planes is how.conditioning (`native_denoiser`, `replace_denoiser`); at the end
              they are exactly `known`. Without them the clip is joint (`joint_denoiser`).
    noise     the starting x at t = num_timesteps−1 (else drawn from `generator`).
    generator every random draw (start noise, per-step noise, re-noised and pure-noise planes) comes
              from it, so one seed fixes the sample; it may live on another device.
    """
    how = how.for_model(diffusion)
    if (known is None) != (known_mask is None):
        raise ValueError("diffusion: pass `known` and `known_mask` together")
    params = model.parameters() if isinstance(model, torch.nn.Module) else ()   # a plain callable: cpu
    device = noise.device if noise is not None else next((p.device for p in params), torch.device("cpu"))
    draw_device = generator.device if generator is not None else device
    randn = lambda: torch.randn(shape, generator=generator, device=draw_device, dtype=torch.float32).to(device)
    x = noise.to(device=device, dtype=torch.float32) if noise is not None else randn()
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"diffusion: noise has shape {tuple(x.shape)}, expected {tuple(shape)}")
    if known is None:
        denoiser = joint_denoiser(diffusion, model, how, y, randn)
    else:
        known, known_mask = broadcast_known(known, known_mask, shape, device)
        make = native_denoiser if how.conditioning == "native" else replace_denoiser
        denoiser = make(diffusion, model, how, y, randn, known, known_mask)
    was_training = getattr(model, "training", False)
    if isinstance(model, torch.nn.Module):
        model.eval()                                              # no label dropout while sampling
    try:
        x = solve(diffusion, denoiser, x, how, randn, progress)
    finally:
        if isinstance(model, torch.nn.Module):
            model.train(was_training)
    return x if known is None else torch.where(known_mask, known, x)   # the known planes, exactly


# ---- the denoiser function of each way to sample: conditioning and guidance live here ----

def joint_denoiser(diffusion, model, how, y, randn):
    """Joint generation: the model's ε̂ with classifier-free guidance on y, and with how.xmodal_cfg
    ≠ 1 each modality also guided by the other (`joint_xmodal_eps`)."""
    if how.xmodal_cfg == 1.0:
        return lambda x, t: diffusion.predict_eps(model, x, t, y, how.cfg_scale).float()
    return lambda x, t: joint_xmodal_eps(diffusion, model, x, t, y, how.cfg_scale, how.xmodal_cfg, randn)


def native_denoiser(diffusion, model, how, y, randn, known, known_mask):
    """A2V / V2A with the known modality clean [ours, after UniDiffuser]: its planes are `known`
    itself and the model hears t = 0 for them beside the free planes' t (`native_eps`, with
    cross-modal guidance against the known modality at pure noise). `known_mask` must select all
    video planes or all audio planes: one t per modality."""
    known_video = known_modality(known_mask)

    def denoiser(x, t):
        x = torch.where(known_mask, known, x)                     # the known planes stay clean
        return native_eps(diffusion, model, x, t, y, how.cfg_scale, known_mask, known_video, how.xmodal_cfg, randn)
    return denoiser


def replace_denoiser(diffusion, model, how, y, randn, known, known_mask):
    """A2V / V2A by replacement [ours, MM-Diffusion]: before every call the known planes are
    q_sample(known, t) with fresh noise, so the model denoises the rest in agreement with them;
    how.guidance > 0 adds reconstruction guidance [Ho et al. 2022] (`guided_eps`): the free planes'
    x̂0 moves by −(w·√ᾱ/2)·∇ₓ‖x̂0[known] − known‖², towards what makes the model's own denoising of
    the known planes agree with them. Replacement alone informs the free planes only through the
    model's attention to the known ones, which a joint model may barely use; the gradient also
    reaches them through the known planes' dependence on the free ones. how.xmodal_cfg does not
    apply: the known planes are never shown at another level than the free ones."""

    def denoiser(x, t):
        x = torch.where(known_mask, diffusion.q_sample(known, t, randn()), x)
        if how.guidance > 0:
            return guided_eps(diffusion, model, x, t, y, how.cfg_scale, known, known_mask, how.guidance)
        return diffusion.predict_eps(model, x, t, y, how.cfg_scale).float()
    return denoiser


def broadcast_known(known, known_mask, shape, device):
    """`known` as float32 on `device`, and `known_mask` (a `P` bool over the plane axis, or any
    shape broadcastable to `shape`) expanded to `shape`."""
    known = known.to(device=device, dtype=torch.float32)
    known_mask = torch.as_tensor(known_mask, dtype=torch.bool, device=device)
    if known_mask.dim() == 1 and known_mask.shape[0] == shape[2]:
        known_mask = known_mask.reshape(1, 1, -1, *([1] * (len(shape) - 3)))  # over the P axis
    return known, known_mask.expand(shape)

def known_modality(known_mask):
    """True if `known_mask` (`B×c×P×L×L` bool) selects exactly the video planes, False if exactly
    the audio planes; anything else is refused (native conditioning sets one t per modality)."""
    planes = known_mask.movedim(2, 0).reshape(known_mask.shape[2], -1)
    whole = planes.all(dim=1)
    if known_mask.shape[2] != len(VIDEO_PLANES) or not torch.equal(whole, planes.any(dim=1)):
        raise ValueError("diffusion: conditioning='native' needs `known_mask` to select whole planes of the "
                         f"{len(VIDEO_PLANES)}-plane latent, got shape {tuple(known_mask.shape)} "
                         "with partial planes")
    video = VIDEO_PLANES.to(whole.device)
    if torch.equal(whole, video):
        return True
    if torch.equal(whole, ~video):
        return False
    raise ValueError(f"diffusion: conditioning='native' needs `known_mask` to be all video planes "
                     f"{video.tolist()} or all audio planes, got {whole.tolist()}")


# ---- the model's ε̂ under conditioning and guidance: one batched forward of every copy a step needs ----

def native_eps(diffusion, model, x, t, y, cfg_scale, known_mask, known_video, xmodal_cfg, randn):
    """ε̂ of the free planes with the known modality clean (see `sample_latent`, conditioning "native").

    x `B×c×P×L×L` float32 with the known planes = the clean known latent, t `B` (the free planes'
    level). The conditional copy sees t = 0 on the known modality; the cross-modal copy sees fresh
    noise there at t = num_timesteps−1; the class copy the null label. All copies go through one
    batched forward; with no guidance, one plain forward. The known planes' ε̂ is not meaningful."""
    zero, pure = torch.zeros_like(t), torch.full_like(t, diffusion.num_timesteps - 1)
    pair = (lambda given: torch.stack([given, t] if known_video else [t, given], dim=1))  # → B×2
    t_cond = pair(zero)
    xs, ts, labels = [x], [t_cond], [y]
    use_xmodal = xmodal_cfg != 1.0
    use_class = y is not None and cfg_scale != 1.0
    if use_xmodal:                                                # the known modality at pure noise
        xs.append(torch.where(known_mask, randn(), x))
        ts.append(pair(pure))
        labels.append(y)
    if use_class:                                                 # the null label, the known planes kept
        xs.append(x)
        ts.append(t_cond)
        labels.append(torch.full_like(y, model.null_label))
    if len(xs) == 1:
        return diffusion.as_eps(model(x, t_cond, y), x, t_cond).float()
    outs = model(torch.cat(xs), torch.cat(ts), None if y is None else torch.cat(labels)).chunk(len(xs))
    eps = [diffusion.as_eps(o, xi, ti).float() for o, xi, ti in zip(outs, xs, ts)]
    if use_xmodal:
        out = eps[1] + xmodal_cfg * (eps[0] - eps[1])
        if use_class:
            out = out + (cfg_scale - 1.0) * (eps[0] - eps[2])
    else:
        out = eps[1] + cfg_scale * (eps[0] - eps[1])              # class guidance alone, as predict_eps
    return out

def joint_xmodal_eps(diffusion, model, x, t, y, cfg_scale, xmodal_cfg, randn):
    """ε̂ of joint sampling with cross-modal guidance [ours, after UniDiffuser]: each modality's ε̂
    is pushed away from the one it makes when the OTHER modality is pure noise, ε̂_m = ε̂_m,u +
    s·(ε̂_m,c − ε̂_m,u), as classifier-free guidance does with a label, the partner stream being
    the condition. Only a denoiser trained with independent noise levels has seen the partner at
    pure noise. x `B×c×P×L×L` float32, t `B`. One forward of three copies (both at t; the video
    with the audio at pure noise; the audio with the video at pure noise), four with class
    guidance, which adds (cfg_scale − 1)·(ε̂_c − ε̂(∅)) as in native_eps."""
    video = VIDEO_PLANES.to(x.device)[None, None, :, None, None]
    pure = torch.full_like(t, diffusion.num_timesteps - 1)
    fresh = randn()
    xs = [x, torch.where(video, x, fresh), torch.where(video, fresh, x)]
    ts = [torch.stack([t, t], 1), torch.stack([t, pure], 1), torch.stack([pure, t], 1)]
    use_class = y is not None and cfg_scale != 1.0
    if use_class:
        xs.append(x)
        ts.append(ts[0])
    labels = None if y is None else torch.cat([y, y, y] + ([torch.full_like(y, model.null_label)] if use_class else []))
    outs = model(torch.cat(xs), torch.cat(ts), labels).chunk(len(xs))
    eps = [diffusion.as_eps(o, xi, ti).float() for o, xi, ti in zip(outs, xs, ts)]
    alone = torch.where(video, eps[1], eps[2])            # each modality's ε̂ without its partner
    out = alone + xmodal_cfg * (eps[0] - alone)
    if use_class:
        out = out + (cfg_scale - 1.0) * (eps[0] - eps[3])
    return out


def guided_eps(diffusion, model, x, t, y, cfg_scale, known, known_mask, w):
    """ε̂ after reconstruction guidance (see `sample_latent`): one forward and one backward pass.
    x, known `B×c×P×L×L` float32, known_mask bool of that shape, t `B` (one timestep)."""
    ab = diffusion._at(diffusion.alphas_cumprod, t, x)
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        eps = diffusion.predict_eps(model, x, t, y, cfg_scale).float()
        x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
        err = (x0 - known).pow(2).masked_fill(~known_mask, 0.0).sum()
        grad, = torch.autograd.grad(err, x)
    x, eps, x0 = x.detach(), eps.detach(), x0.detach()
    x0 = x0 - torch.where(known_mask, 0.0, 0.5 * w * ab.sqrt() * grad)  # the known planes are replaced anyway
    return (x - ab.sqrt() * x0) / (1 - ab).sqrt()                 # the ε that this x̂0 implies at x


# ---- one reverse step x_t → x_{t_prev}, given ε̂ ----

def ddim_step(diffusion, x, eps, t, t_prev, sampler, eta, randn):
    """One DDIM step (η = eta) or, for sampler "ddpm", one ancestral step x_t → x_{t_prev} on the
    respaced grid (t_prev=None: the last step, to x0)."""
    ab_t = diffusion.alphas_cumprod[t].item()
    ab_prev = diffusion.alphas_cumprod[t_prev].item() if t_prev is not None else 1.0  # clean: ᾱ = 1
    x0 = (x - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)        # invert q_sample; not clipped
    if sampler == "ddpm":
        beta = 1 - ab_t / ab_prev                                 # β of the respaced chain, from ᾱ
        # posterior q(x_prev | x_t, x0): mean a·x0 + b·x_t, variance β̃
        coef_x0 = math.sqrt(ab_prev) * beta / (1 - ab_t)
        coef_xt = math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab_t)
        sigma = math.sqrt(beta * (1 - ab_prev) / (1 - ab_t))
        x = coef_x0 * x0 + coef_xt * x
    else:
        # DDIM: re-noise the x0 estimate to the previous level along ε; σ goes from 0 (η=0,
        # deterministic) to √β̃ (η=1, the same distribution as DDPM)
        sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev))
        x = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma ** 2, 0.0)) * eps
    if sigma > 0:                                                 # no noise on the last step (σ = 0)
        x = x + sigma * randn()
    return x


def dpm_step(diffusion, x, eps, t, t_prev, history, eta, randn):
    """One DPM-Solver++(2M) step x_t → x_{t_prev} (Lu et al. 2022, multistep, data prediction):
    returns (x_{t_prev}, history for the next step).

    With α = √ᾱ, σ = √(1−ᾱ), λ = log(α/σ), h = λ_prev − λ_t and x̂0 = (x − σ_t·ε̂)/α_t:
      x_prev = (σ_prev/σ_t)·e^(−ηh)·x_t + α_prev·(1 − e^(−(1+η)h))·D + σ_prev·√(1 − e^(−2ηh))·z
    η = 0 is the probability-flow ODE solver; η = 1 its SDE form (SDE-DPM-Solver++(2M), as
    diffusers' "sde-dpmsolver++"), whose first-order step is exactly DDPM's posterior step, the
    same as DDIM at η = 1: fresh noise z each step, as there, for the same reason (it syncs better
    at a given step count; RESULTS.md, "Which sampler and how many steps?").
    D = x̂0 on the first step (no history: DDIM's update) and
    D = (1 + 1/(2r))·x̂0 − 1/(2r)·x̂0_before, r = h_before/h, afterwards: the second-order
    multistep correction. The last two steps are first order [ours]: the one into t = 0, whose
    λ-step on a grid uniform in t is several times the one before (where the 2M extrapolation
    overshoots), and costs nothing measurable (a second-order step there moves the Gaussian test's
    variance error by < 0.1%); and the one from t = 0 to clean (t_prev=None, σ = 0, λ = ∞),
    which is x_0 = x̂0."""
    ab_t = diffusion.alphas_cumprod[t].item()
    alpha_t, sigma_t = math.sqrt(ab_t), math.sqrt(1 - ab_t)
    x0 = (x - sigma_t * eps) / alpha_t                           # invert q_sample; not clipped
    if t_prev is None:
        return x0, None
    ab_prev = diffusion.alphas_cumprod[t_prev].item()
    alpha_prev, sigma_prev = math.sqrt(ab_prev), math.sqrt(1 - ab_prev)
    h = math.log(alpha_prev / sigma_prev) - math.log(alpha_t / sigma_t)
    d = x0
    # first order into t = 0 as well: that step is the last real one (σ_0 ≈ 0.01), and on a grid
    # uniform in t its λ-step is several times the one before, where the 2M extrapolation
    # (weight 1/(2r) on the older x̂0) overshoots
    if history is not None and t_prev > 0:
        x0_before, h_before = history
        r = h_before / h
        d = (1 + 0.5 / r) * x0 - (0.5 / r) * x0_before
    x = (sigma_prev / sigma_t) * math.exp(-eta * h) * x - alpha_prev * math.expm1(-(1 + eta) * h) * d
    if eta > 0:
        x = x + sigma_prev * math.sqrt(-math.expm1(-2 * eta * h)) * randn()
    return x, (x0, h)

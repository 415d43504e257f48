"""
The reverse process: sampling the stacked latent from noise (PAPER.md §5).

  Sampling       every sampling choice with its default, in one place (sample.py, evaluate.py,
                 train.py's previews and pipeline.generate read it); a checkpoint's objective and
                 noise-level mixture decide the choices it leaves open (`for_model`, once a request) [ours]
  solve          the sampler as the papers write it: a plain loop over a denoiser function
                 f(x, t, level) → prediction, one update per call on any path x_t = α_t·x0 + σ_t·ε:
                 DDIM (η; DDPM's ancestral sampler is η = 1) and Euler, DPM-Solver++(2M)
                 (Lu et al. 2022) in data-prediction form, its SDE form at η = 1             [ours]
                 shortcut: 1-64 steps of a model taught their size (Frans et al. 2025)       [ours]
  *_denoiser     f for each way to sample, where conditioning and guidance live:
                 joint: classifier-free guidance on the label, and cross-modal guidance, each
                 stream against the other at pure noise                        [ours, after UniDiffuser]
                 A2V / V2A "native": the known modality clean at t = 0, with cross-modal guidance
                 against it at pure noise                                      [ours, after UniDiffuser]
                 A2V / V2A "replace": the known planes re-noised at every step     [ours, MM-Diffusion]
                 with reconstruction guidance on the free planes                 [ours, Ho et al. 2022]

A process (diffusion.DDPM, or diffusion.Flow for rectified flow) supplies the path through the
contract of diffusion.NoiseProcess: `alpha_sigma(level)`, `x0_eps(x, prediction, level)`, the grid
`levels(steps, grid)`, and how to call the model (`predict`, `model_time`, `as_prediction`). The
steps are written once, in α and σ, for both.
"""
import math
from dataclasses import dataclass, replace
from typing import Literal, Optional, get_args

import torch
from tqdm import tqdm

from diffusion import SHORTCUT_LEVELS
from model import VIDEO_PLANES

# The allowed values of the sampling choices (each listed once, here; `Sampling` below holds the defaults).
Sampler = Literal["dpm++", "ddim", "ddpm", "euler", "shortcut"]
Grid = Literal["time", "logsnr"]
Conditioning = Literal["native", "replace"]
SAMPLERS = {"ddpm": ("dpm++", "ddim", "ddpm"), "flow": ("dpm++", "euler", "shortcut")}   # by objective
# Steps per run each sampler takes unless told otherwise. DPM-Solver++ at 10 is the fewest that keep
# every sync target with the default denoiser (RESULTS.md, "How many denoiser calls does a sounding
# clip need?"). Ancestral sampling, first order with the most noise, needs the most. Shortcut steps
# (a model trained for them) take a power of two, each of the size it was taught.
DEFAULT_STEPS = {"dpm++": 10, "ddim": 50, "ddpm": 250, "euler": 50, "shortcut": 8}

# ----------------------------------------------------------------------------------------------
# How to sample: the one owner of the defaults
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sampling:
    """Every choice of how a clip is sampled, with the defaults that sample.py, evaluate.py,
    train.py's previews and pipeline.generate all read from here. None means "as the checkpoint
    was trained for": `for_model` decides it from the denoiser's objective and noise-level mixture."""
    sampler: Sampler = "dpm++"         # the solver: DPM-Solver++(2M) (both objectives), DDIM or DDPM's
                                       # ancestral sampler (ddpm), Euler or shortcut steps (flow; a denoiser
                                       # trained with them)
    steps: Optional[int] = None        # denoiser steps per run; auto = the sampler's own (dpm++ 10, ddim 50,
                                       # ddpm 250, euler 50, shortcut 8)
    eta: float = 1.0                   # ddim / dpm++ / shortcut noise: 1 = DDPM-like (syncs better), 0 = deterministic (the ODE)
    grid: Grid = "time"                # levels spread uniformly in t, or in log-SNR (ddpm only)
    cfg_scale: float = 1.0             # classifier-free guidance scale on the class label (1 = none; a denoiser
                                       # trained with learned_class_guidance is guided already)
    xmodal_cfg: Optional[float] = None  # cross-modal guidance scale of joint and native a2v / v2a (1 = none);
                                        # auto = 4 for a denoiser trained with independent or one-clean
                                        # noise levels, else 1 (it never saw a partner at another level,
                                        # or it learned the guided prediction itself)
    resample_audio: bool = False       # joint: then re-draw the audio given the finished video, as v2a does
                                       # (a Gibbs step; one more v2a run a clip)
    conditioning: Optional[Conditioning] = None  # a2v / v2a: the given planes clean at t = 0 ("native") or
                                                 # re-noised every step ("replace"); auto = native for a
                                                 # denoiser trained with one modality clean, else replace
    guidance: float = 16.0             # replace: reconstruction guidance weight (0 = replacement alone)
    guide_above: float = 0.0           # cross-modal guidance only at levels at least this share of the way
                                       # to pure noise, one plain forward below (0 = at every step)
    # Not a field (no setting, no part of equality): True only on what `for_model` returns; a
    # `replace` of it is a new Sampling, unresolved again.
    resolved = False

    def for_model(self, process) -> "Sampling":
        """Every None decided by what the denoiser was trained on, checked; the result is
        `resolved`. A denoiser trained with independent or one-clean levels (process.mix) has seen
        one modality beside the other at another level, which cross-modal guidance asks of it."""
        for name, allowed in (("sampler", SAMPLERS[process.objective]), ("grid", get_args(Grid)),
                              ("conditioning", get_args(Conditioning))):
            value = getattr(self, name)
            if value not in allowed and not (name == "conditioning" and value is None):
                raise ValueError(f"{name} must be one of {', '.join(allowed)} for a {process.objective} "
                                 f"model, not {value!r}")
        per_modality = process.mix[1] > 0 or process.mix[2] > 0
        # a denoiser that learned the guided prediction (process.learned_guidance) is guided once already
        auto_xmodal = 4.0 if per_modality and process.learned_guidance == 1.0 else 1.0
        how = replace(
            self, steps=self.steps or DEFAULT_STEPS[self.sampler],
            xmodal_cfg=self.xmodal_cfg if self.xmodal_cfg is not None else auto_xmodal,
            conditioning=self.conditioning or ("native" if process.mix[2] > 0 else "replace"))
        if not 1 <= how.steps <= process.max_steps:        # messages start with the setting's name
            raise ValueError(f"steps must be in 1..{process.max_steps}, not {how.steps}")
        if how.sampler == "shortcut":
            if not process.shortcut:
                raise ValueError("sampler shortcut needs a denoiser trained with shortcut steps (shortcut_steps > 0); "
                                 "this one was not: use dpm++ or euler")
            taught = [2 ** k for k in range(SHORTCUT_LEVELS)]
            if how.steps not in taught:
                raise ValueError(f"steps must be one of {', '.join(map(str, taught))} for sampler shortcut, "
                                 f"not {how.steps}")
        for name in ("eta", "guidance", "cfg_scale", "xmodal_cfg", "guide_above"):
            if getattr(how, name) < 0:
                raise ValueError(f"{name} must be ≥ 0, not {getattr(how, name)}")
        object.__setattr__(how, "resolved", True)        # frozen: set once, here
        return how


def denoiser_forwards(process, how: Sampling, mode: str = "joint") -> int:
    """Clips through the denoiser's forward per sampled clip under a resolved `how`
    (Sampling.for_model), the cost that matters: joint with cross-modal guidance batches 3 copies
    a step, native A2V / V2A with it 2 (at the steps above how.guide_above), class guidance adds
    one; the audio re-draw adds a V2A run. Reconstruction guidance ("replace") adds a backward pass
    a step, not counted here."""
    classes = 1 if how.cfg_scale != 1.0 else 0                     # the null-label copy
    guided = sum(guides(process, how, level) for level in process.levels(how.steps, how.grid))
    if mode == "joint":
        joint = how.steps * (1 + classes) + 2 * guided
        return joint + (denoiser_forwards(process, how, "v2a") if how.resample_audio else 0)
    if how.conditioning == "native":
        return how.steps * (1 + classes) + guided
    return how.steps * (1 + classes)


def guides(process, how: Sampling, level) -> bool:
    """Whether cross-modal guidance acts at `level` (a number)."""
    return how.xmodal_cfg != 1.0 and process.share_of(level) >= how.guide_above


# ----------------------------------------------------------------------------------------------
# The reverse process: a solver over a denoiser function
# ----------------------------------------------------------------------------------------------


def solve(process, denoiser, x, how, randn, progress=False):
    """x at pure noise → x̂0 on the `how.steps` levels of `how.grid`: the paper's sampler.

    denoiser(x, t, level) → the prediction (ε̂ for DDPM, v̂ for flow), for x `B×c×P×L×L` float32
    with every clip at one level: t `B` in process.level_dtype for the model, `level` the grid's
    number itself, as the steps use it (every plane the solver moves is at it; a denoiser that holds some planes
    elsewhere, given clean or a partner at pure noise, tells the model so itself). Each step is one
    call and one update, DDIM / DDPM / Euler (`ddim_step`) or DPM-Solver++(2M) (`dpm_step`), to
    the next lower level, and after the lowest to x̂0; the update's fresh noise is drawn here,
    with randn()."""
    levels = process.levels(how.steps, how.grid)                  # ascending; the solver walks down
    history = None                                                # dpm++: the previous x̂0 and step in λ
    for i in tqdm(range(len(levels) - 1, -1, -1), disable=not progress, desc=how.sampler):
        level, level_prev = levels[i], (levels[i - 1] if i > 0 else None)   # None: the step to x0
        t = torch.full((x.shape[0],), level, device=x.device, dtype=process.level_dtype)
        pred = denoiser(x, t, level)
        if how.sampler == "dpm++":
            x, noise_sd, history = dpm_step(process, x, pred, level, level_prev, history, how)
        else:
            x, noise_sd = ddim_step(process, x, pred, level, level_prev, how)
        if noise_sd > 0:
            x = x + noise_sd * randn()
    return x


@torch.no_grad()
def sample_latent(process, model, shape, how=Sampling(), *, y=None, known=None, known_mask=None,
                  noise=None, generator=None, progress=False):
    """Draw x0 of `shape` (B×c×P×L×L) from noise; returns float32.

    how       a Sampling; resolved here (`Sampling.for_model`) unless the caller resolved it.
    y         class labels `B` for classifier-free guidance at how.cfg_scale.
    known, known_mask  A2V / V2A: `known` a clean latent of `shape`; `known_mask` a bool over the
              P plane axis (length P) or broadcastable to `shape`. How the model is told about the
              known planes is how.conditioning (`native_denoiser`, `replace_denoiser`); at the end
              they are exactly `known`. Without them the clip is joint (`joint_denoiser`).
    noise     the starting x, at pure noise (else drawn here, the one place it is drawn).
    generator every random draw (start noise, per-step noise, re-noised and pure-noise planes) comes
              from it, so one seed fixes the sample; it may live on another device.
    """
    how = how if how.resolved else how.for_model(process)
    if (known is None) != (known_mask is None):
        raise ValueError("sampling: pass `known` and `known_mask` together")
    params = model.parameters() if isinstance(model, torch.nn.Module) else ()   # a plain callable: cpu
    device = noise.device if noise is not None else next((p.device for p in params), torch.device("cpu"))
    draw_device = generator.device if generator is not None else device
    randn = lambda: torch.randn(shape, generator=generator, device=draw_device, dtype=torch.float32).to(device)
    x = noise.to(device=device, dtype=torch.float32) if noise is not None else randn()
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"sampling: noise has shape {tuple(x.shape)}, expected {tuple(shape)}")
    # shortcut steps: every call asks for a step of the grid's spacing, 1/steps of the way
    net = WithStep(model, process.model_time(1.0 / how.steps)) if how.sampler == "shortcut" else model
    if known is None:
        denoiser = joint_denoiser(process, net, how, y, randn)
    else:
        known, known_mask = broadcast_known(known, known_mask, shape, device)
        make = native_denoiser if how.conditioning == "native" else replace_denoiser
        denoiser = make(process, net, how, y, randn, known, known_mask)
    was_training = getattr(model, "training", False)
    if isinstance(model, torch.nn.Module):
        model.eval()                                              # no label dropout while sampling
    try:
        x = solve(process, denoiser, x, how, randn, progress)
    finally:
        if isinstance(model, torch.nn.Module):
            model.train(was_training)
    return x if known is None else torch.where(known_mask, known, x)   # the known planes, exactly


class WithStep:
    """`model(x, t, y)` that calls model(x, t, y, step=step) with one step size for every clip:
    how the shortcut sampler asks a model trained for it (Flow.shortcut_loss) for the velocity of a
    whole step, through the denoiser functions below unchanged."""

    def __init__(self, model, step: float):
        self.model, self.step = model, step

    @property
    def null_label(self):
        return self.model.null_label

    def __call__(self, x, t, y=None):
        return self.model(x, t, y, step=torch.full(t.shape[:1], self.step, device=t.device))


# ---- the denoiser function of each way to sample: conditioning and guidance live here. The
# prediction (ε̂ or v̂) takes one batched forward of every copy a step needs; the guidance
# combinations are linear, so they read the same for either ----

def joint_denoiser(process, model, how, y, randn):
    """Joint generation: the model's prediction with classifier-free guidance on y, and with
    how.xmodal_cfg ≠ 1 (at the levels `guides` allows) cross-modal guidance [ours, after
    UniDiffuser]: each modality's ε̂ is pushed away from the one it makes when the OTHER modality
    is pure noise, ε̂_m = ε̂_m,u + s·(ε̂_m,c − ε̂_m,u), as classifier-free guidance does with a label,
    the partner stream being the condition. Only a denoiser trained with independent noise levels
    has seen the partner at pure noise. One forward of three copies (both at t; the video with the
    audio at pure noise; the audio with the video at pure noise), four with class guidance, which
    adds (cfg_scale − 1)·(ε̂_c − ε̂(∅)) as in `native_denoiser`."""
    use_class = y is not None and how.cfg_scale != 1.0

    def denoiser(x, t, level):
        if not guides(process, how, level):
            return process.predict(model, x, t, y, how.cfg_scale).float()
        video = VIDEO_PLANES.to(x.device)[None, None, :, None, None]
        pure, fresh = torch.full_like(t, process.pure_noise), randn()
        xs = [x, torch.where(video, x, fresh), torch.where(video, fresh, x)]
        ts = [torch.stack([t, t], 1), torch.stack([t, pure], 1), torch.stack([pure, t], 1)]
        labels = [y, y, y]
        if use_class:                                             # the null label, both at t
            xs.append(x)
            ts.append(ts[0])
            labels.append(torch.full_like(y, model.null_label))
        eps = forward_copies(process, model, xs, ts, None if y is None else labels)
        alone = torch.where(video, eps[1], eps[2])                # each modality's ε̂ without its partner
        out = alone + how.xmodal_cfg * (eps[0] - alone)
        return out + (how.cfg_scale - 1.0) * (eps[0] - eps[3]) if use_class else out
    return denoiser


def native_denoiser(process, model, how, y, randn, known, known_mask):
    """A2V / V2A with the known modality clean [ours, after UniDiffuser]: its planes are `known`
    itself and the model hears t = 0 for them beside the free planes' t. With cross-modal guidance
    (`guides`) a second copy sees fresh noise on the known modality at pure noise, and the free
    planes' prediction is ε̂_u + s·(ε̂_c − ε̂_u); class guidance adds a copy with the null label and
    (cfg_scale − 1)·(ε̂_c − ε̂(∅)). All copies go through one batched forward; with no guidance,
    one plain forward. The known planes' prediction is not meaningful. `known_mask` must select
    all video planes or all audio planes: one t per modality."""
    known_video = known_modality(known_mask)
    use_class = y is not None and how.cfg_scale != 1.0

    def denoiser(x, t, level):
        x = torch.where(known_mask, known, x)                     # the known planes stay clean
        pair = lambda given: torch.stack([given, t] if known_video else [t, given], dim=1)  # noqa: E731 (→ B×2)
        t_cond = pair(torch.zeros_like(t))
        use_xmodal = guides(process, how, level)
        xs, ts, labels = [x], [t_cond], [y]
        if use_xmodal:                                            # the known modality at pure noise
            xs.append(torch.where(known_mask, randn(), x))
            ts.append(pair(torch.full_like(t, process.pure_noise)))
            labels.append(y)
        if use_class:                                             # the null label, the known planes kept
            xs.append(x)
            ts.append(t_cond)
            labels.append(torch.full_like(y, model.null_label))
        eps = forward_copies(process, model, xs, ts, None if y is None else labels)
        if use_xmodal:
            out = eps[1] + how.xmodal_cfg * (eps[0] - eps[1])
            return out + (how.cfg_scale - 1.0) * (eps[0] - eps[2]) if use_class else out
        if use_class:
            return eps[1] + how.cfg_scale * (eps[0] - eps[1])     # class guidance alone, as `predict`
        return eps[0]
    return denoiser


def replace_denoiser(process, model, how, y, randn, known, known_mask):
    """A2V / V2A by replacement [ours, MM-Diffusion]: before every call the known planes are
    q_sample(known, t) with fresh noise, so the model denoises the rest in agreement with them.
    how.guidance = w > 0 adds reconstruction guidance [Ho et al. 2022], one forward and one
    backward pass: the free planes' x̂0 moves by −(w·α_t/2)·∇ₓ‖x̂0[known] − known‖², towards what
    makes the model's own denoising of the known planes agree with them, and the prediction
    returned is the one that gives this x̂0 at x. Replacement alone informs the free planes only
    through the model's attention to the known ones, which a joint model may barely use; the
    gradient also reaches them through the known planes' dependence on the free ones.
    how.xmodal_cfg does not apply: the known planes are never shown at another level than the
    free ones."""

    def denoiser(x, t, level):
        x = torch.where(known_mask, process.q_sample(known, t, randn()), x)
        if how.guidance == 0:                                    # replacement alone
            return process.predict(model, x, t, y, how.cfg_scale).float()
        alpha, _ = process.alpha_sigma(level)
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            pred = process.predict(model, x, t, y, how.cfg_scale).float()
            x0 = process.x0_eps(x, pred, level)[0]
            err = (x0 - known).pow(2).masked_fill(~known_mask, 0.0).sum()
            grad, = torch.autograd.grad(err, x)
        x, x0 = x.detach(), x0.detach()
        # the free planes' x̂0 moved; the known planes are replaced anyway
        moved = x0 - torch.where(known_mask, 0.0, 0.5 * how.guidance * alpha * grad)
        return process.pred_of_x0(x, moved, level)
    return denoiser


def forward_copies(process, model, xs, ts, labels):
    """Copies of a batch through one forward: xs `B×c×P×L×L` each, ts their levels (`B×2`), labels
    their `B` labels or None → their predictions in `x0_eps`'s form, float32, in order."""
    outs = model(torch.cat(xs), process.model_time(torch.cat(ts)),
                 None if labels is None else torch.cat(labels)).chunk(len(xs))
    return [process.as_prediction(o, xi, ti).float() for o, xi, ti in zip(outs, xs, ts)]


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
        raise ValueError("process: conditioning='native' needs `known_mask` to select whole planes of the "
                         f"{len(VIDEO_PLANES)}-plane latent, got shape {tuple(known_mask.shape)} "
                         "with partial planes")
    video = VIDEO_PLANES.to(whole.device)
    if torch.equal(whole, video):
        return True
    if torch.equal(whole, ~video):
        return False
    raise ValueError(f"process: conditioning='native' needs `known_mask` to be all video planes "
                     f"{video.tolist()} or all audio planes, got {whole.tolist()}")


# ---- one reverse step x_t → x_{t_prev}, given the prediction: the mean of x_{t_prev} and the
# standard deviation of the fresh noise `solve` adds to it ----

def ddim_step(process, x, pred, t, t_prev, how):
    """One DDIM step x_t → x_{t_prev} on the path x = α·x0 + σ·ε (t_prev=None: the last step, to
    x̂0): returns (α_prev·x̂0 + √(σ_prev² − s²)·ε̂, s), the next x being that plus s·z with
    s = η·(σ_prev/σ_t)·√(σ_t² − (α_t·σ_prev/α_prev)²). η = how.eta; sampler "euler" is η = 0,
    deterministic, and on the flow path exactly Euler's step x + (t_prev − t)·v̂; sampler "ddpm"
    is η = 1, a draw from the posterior q(x_prev | x_t, x̂0): DDPM's ancestral step. Sampler
    "shortcut" is this step on the velocity of the whole step (`WithStep`): at η = 0 exactly the
    shortcut step x_t − (t − t_prev)·v̂, and into t = 0, x̂0 = x_t − t·v̂."""
    x0, eps = process.x0_eps(x, pred, t)
    if t_prev is None:
        return x0, 0.0
    eta = 1.0 if how.sampler == "ddpm" else 0.0 if how.sampler == "euler" else how.eta
    alpha, sigma = process.alpha_sigma(t)
    alpha_prev, sigma_prev = process.alpha_sigma(t_prev)
    spread = eta * sigma_prev / sigma * math.sqrt(max(sigma ** 2 - (alpha * sigma_prev / alpha_prev) ** 2, 0.0))
    return alpha_prev * x0 + math.sqrt(max(sigma_prev ** 2 - spread ** 2, 0.0)) * eps, spread


def dpm_step(process, x, pred, t, t_prev, history, how):
    """One DPM-Solver++(2M) step x_t → x_{t_prev} (Lu et al. 2022, multistep, data prediction):
    returns (the mean of x_{t_prev}, the standard deviation of its fresh noise, history for the
    next step).

    With λ = log(α/σ) (−∞ at pure noise on the flow path), h = λ_prev − λ_t, η = how.eta and x̂0
    from `x0_eps`:
      x_prev = (σ_prev/σ_t)·e^(−ηh)·x_t + α_prev·(1 − e^(−(1+η)h))·D + σ_prev·√(1 − e^(−2ηh))·z
    η = 0 is the probability-flow ODE solver; η = 1 its SDE form (SDE-DPM-Solver++(2M), as
    diffusers' "sde-dpmsolver++"), whose first-order step is exactly DDPM's posterior step, the
    same as DDIM at η = 1: fresh noise z each step, as there, for the same reason (it syncs better
    at a given step count; RESULTS.md, "Which sampler and how many steps?").
    D = x̂0 on the first step (no history: DDIM's update) and
    D = (1 + 1/(2r))·x̂0 − 1/(2r)·x̂0_before, r = h_before/h, afterwards: the second-order
    multistep correction. The last two steps are first order [ours]: the one into t = 0, whose
    λ-step on a grid uniform in t is several times the one before (where the 2M extrapolation
    overshoots), and whose second-order form gains nothing measurable (RESULTS.md, "Which sampler
    and how many steps?"); and the one from the lowest level to clean (t_prev=None, σ = 0,
    λ = ∞), which is x_0 = x̂0."""
    x0 = process.x0_eps(x, pred, t)[0]
    if t_prev is None:
        return x0, 0.0, None
    (alpha, sigma), (alpha_prev, sigma_prev) = process.alpha_sigma(t), process.alpha_sigma(t_prev)
    lam = lambda a, s: math.log(a / s) if a > 0 else -math.inf    # noqa: E731 (α = 0: pure noise)
    h = lam(alpha_prev, sigma_prev) - lam(alpha, sigma)
    d = x0
    if history is not None and t_prev > 0 and math.isfinite(history[1]):   # first order into t = 0 too
        x0_before, h_before = history
        r = h_before / h
        d = (1 + 0.5 / r) * x0 - (0.5 / r) * x0_before
    eta = how.eta
    decay = math.exp(-eta * h) if eta > 0 else 1.0               # e^(−ηh), 1 at η = 0 even for h = ∞
    x = (sigma_prev / sigma) * decay * x - alpha_prev * math.expm1(-(1 + eta) * h) * d
    noise_sd = sigma_prev * math.sqrt(-math.expm1(-2 * eta * h)) if eta > 0 else 0.0
    return x, noise_sd, (x0, h)

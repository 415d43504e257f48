"""
The forward processes over the stacked latent and their training losses: PAPER.md §5.

  NoiseProcess   what a process gives the samplers (sampling.py) and the loss, written once: the
                 methods and attributes every process defines, and what both share
  DDPM           x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε, t ∈ {0..num_timesteps−1}, linear β 1e-4 → 0.02
                 (DDPM) or cosine (Nichol & Dhariwal), 1000 steps                      [paper; ours]
                 loss: MSE on ε (DDPM) or on v = √ᾱ·ε − √(1−ᾱ)·x0 (Salimans & Ho)      [DDPM; ours]
  Flow           rectified flow: x_t = (1 − t)·x0 + t·ε, t ∈ [0, 1]; the network predicts the
                 velocity v = ε − x0; t drawn logit-normal and shifted              [ours, after SD3]
                 shortcut steps: the velocity of a whole step of size δ, taught by self-consistency
                 (one step of δ = two of δ/2), so a few steps follow the ODE   [ours, after Frans et al. 2025]
  both           a noise level per clip or per modality (t_v, t_a), drawn from a mixture of
                 equal, independent and one-clean pairs       [ours, after UniDiffuser and AVDiT]

The reverse process (samplers, guidance, conditioning) is sampling.py; it reads a process only
through `NoiseProcess`'s contract.

The model is any callable `model(x_t, t, y) → prediction` with the shape of x_t (model.STDiT), where
t is `B` (one level for every plane) or `B×2` (t_v for the video planes, t_a for the audio planes).
DDPM calls it with ORIGINAL timestep indices 0..num_timesteps−1, also on a respaced grid, so one
trained network serves every sampler and step count; flow calls it with 1000·t.

Conventions: the DDPM tables are float64 (ᾱ near 1e-5 at t≈999 needs the digits), and their
entries are cast to the latent's dtype only at use. x0 predictions are NOT clipped: the latents are
scaled to unit variance, not bounded to [-1, 1] like pixels, so there is no range to clip to.
"""
import math
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F

from model import VIDEO_PLANES

# Shortcut steps (Flow.shortcut_loss): steps of 1/2^k of the way, k < SHORTCUT_LEVELS, are taught,
# the finest (1/64) from two halves of the instantaneous velocity; one clip in SHORTCUT_SHARE of a
# batch learns a step, Frans et al.'s quarter.
SHORTCUT_LEVELS = 7
SHORTCUT_SHARE = 4

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
# The contract with the samplers, and what both processes share: a level per modality, the
# mixture, the masked loss
# ----------------------------------------------------------------------------------------------


class NoiseProcess(ABC):
    """A forward process as the samplers (sampling.py) and the loss read it: the contract below,
    which DDPM and Flow each fill in, and what does not depend on the path: per-modality levels,
    the mixture of level pairs the loss draws, the loss over the noised planes, classifier-free
    guidance (`draw_levels`, `loss`, `predict`).

    A level is DDPM's integer timestep 0..num_timesteps−1 or flow's continuous t ∈ [0, 1]; a
    sampler holds one level as a Python number (int or float) and the model gets a tensor of them,
    `B` or per modality `B×2`, in `level_dtype`.

      mix              weights (equal, independent, clean) of the level pairs `loss` draws, made to
                       sum to 1; (1, 0, 0) is one level per clip, drawn exactly as the plain objective
                       draws it.
      min_snr_gamma    0: the plain MSE against `target`. γ > 0: Min-SNR-γ (Hang et al. 2023), each
                       noised plane's error weighed so that, counted as an x0 error, level t weighs
                       min(SNR_t, γ): the near-clean levels stop dominating the gradient.
    """
    objective: str                   # "ddpm" or "flow": which samplers apply (sampling.SAMPLERS)
    level_dtype: torch.dtype         # of a tensor of levels: torch.long (DDPM) or torch.float32 (flow)
    pure_noise: float                # the level that holds no signal: num_timesteps − 1, or 1.0
    max_steps: int                   # the most steps a sampling grid (`levels`) may have
    clean = 0                        # the level of a modality given clean, in both processes
    learned_guidance = 1.0           # the cross-modal guidance scale the model was trained to output
                                     # itself (`loss(guidance=)`); from_config sets it from the config
    learned_class_guidance = 1.0     # the same for classifier-free guidance (`loss(class_guidance=)`)
    class_dropout = 0.0              # P(a training clip's label is dropped to the null label) and that
    null_label = None                # label (= num_classes): `drop_labels`; from_config sets both
    shortcut = False                 # whether the model learned shortcut steps (Flow.shortcut_loss): it
                                     # takes a step size; from_config sets it from the config

    def __init__(self, mix=(1.0, 0.0, 0.0), min_snr_gamma=0.0):
        mix = tuple(float(w) for w in mix)
        if len(mix) != 3 or min(mix) < 0 or sum(mix) <= 0:
            raise ValueError(f"diffusion: mix must be three non-negative weights (equal, independent, clean) "
                             f"with a positive sum, got {mix}")
        if min_snr_gamma < 0:
            raise ValueError(f"diffusion: min_snr_gamma must be ≥ 0, got {min_snr_gamma}")
        self.mix = tuple(w / sum(mix) for w in mix)
        self.min_snr_gamma = float(min_snr_gamma)

    # ---- the contract: training ----

    @abstractmethod
    def draw_t(self, shape, device):
        """Levels of `shape` from the density training draws them from."""

    @abstractmethod
    def q_sample(self, x0, t, noise):
        """x_t on the path from x0 to noise at levels t (`B`, or per modality `B×2`)."""

    @abstractmethod
    def target(self, x0, noise, t):
        """What the network regresses at levels t."""

    @abstractmethod
    def min_snr_weight(self, t):
        """Min-SNR-γ's weight on the squared `target` error at levels t (any shape, same shape out):
        min(SNR_t, γ) times (∂x0/∂target)², so that it is min(SNR_t, γ) on the x0 error."""

    @abstractmethod
    def model_time(self, t):
        """The levels t as the network embeds them."""

    @abstractmethod
    def as_prediction(self, out, x, t):
        """The network's output at x, t in the form `x0_eps` reads."""

    # ---- the contract: sampling, at one level of the grid (a Python number) ----

    @abstractmethod
    def levels(self, steps, grid="time"):
        """The `steps` levels a sampler evaluates, ascending, the last `pure_noise`."""

    @abstractmethod
    def level_at(self, fraction):
        """The level `fraction` of the way from clean to pure noise."""

    @abstractmethod
    def share_of(self, level):
        """How far `level` is from clean to pure noise, in [0, 1]."""

    @abstractmethod
    def alpha_sigma(self, level):
        """(α, σ) of the path x = α·x0 + σ·ε at `level`, as Python floats."""

    @abstractmethod
    def x0_eps(self, x, pred, level):
        """(x̂0, ε̂) from the prediction `pred` (`as_prediction`'s form) at x, `level`."""

    @abstractmethod
    def pred_of_x0(self, x, x0, level):
        """The prediction under which x at `level` denoises to x0: the inverse of `x0_eps`."""

    # ---- shared by both processes ----

    @staticmethod
    def _per_plane(values, x):
        """Per-modality `B×2` values (video, audio) → `B×1×P×1×…` over x's plane axis (dim 2)."""
        if x.dim() < 3 or x.shape[2] != len(VIDEO_PLANES):
            raise ValueError(f"diffusion: a per-modality t needs the {len(VIDEO_PLANES)}-plane latent "
                             f"B×c×{len(VIDEO_PLANES)}×L×L, got {tuple(x.shape)}")
        video = VIDEO_PLANES.to(values.device)[None, :]
        planes = torch.where(video, values[:, :1], values[:, 1:])     # B×P
        return planes.reshape(planes.shape[0], 1, planes.shape[1], *([1] * (x.dim() - 3)))

    def _shaped(self, values, x):
        """Per-clip values `B` → `B×1×…×1`, per-modality `B×2` → `B×1×P×1×…`, in x's dtype."""
        values = values.to(x.dtype)
        if values.dim() == 1:
            return values.reshape(-1, *([1] * (x.dim() - 1)))
        return self._per_plane(values, x)

    def draw_levels(self, batch, device):
        """Per-clip level pairs from the mixture: (t `B×2`, clean `B×2` bool).

        equal        t_v = t_a ~ the process's density: the joint generation sampling starts from
        independent  t_v, t_a drawn independently: each modality learns to read the other at any level
        clean        one modality (each with probability ½) clean, its t = 0; the other drawn:
                     A2V and V2A as `sampling.native_denoiser` samples them
        """
        kind = torch.rand(batch, device=device)
        t = self.draw_t((batch, 2), device)
        video_clean = torch.rand(batch, device=device) < 0.5
        equal = kind < self.mix[0]
        one_clean = kind >= self.mix[0] + self.mix[1]
        t[:, 1] = torch.where(equal, t[:, 0], t[:, 1])
        clean = torch.stack([one_clean & video_clean, one_clean & ~video_clean], dim=1)
        return t.masked_fill(clean, self.clean), clean

    def learned_scales(self) -> dict:
        """The guidance scales the model learns in its guided phase, as `loss` and `shortcut_loss`
        take them: {"guidance": cross-modal w, "class_guidance": classifier-free s}."""
        return dict(guidance=self.learned_guidance, class_guidance=self.learned_class_guidance)

    def drop_labels(self, y):
        """Class labels `B` with each replaced by the null label with probability class_dropout (None
        stays None): drawn once per clip in the loss, so every forward of a training step (the guided
        target's copies, the shortcut's half steps) sees the clip's label the same way."""
        if y is None or self.class_dropout == 0:
            return y
        drop = torch.rand(y.shape, device=y.device) < self.class_dropout
        return torch.where(drop, torch.full_like(y, self.null_label), y)

    def loss(self, model, x0, y=None, *, t=None, noise=None, clean=None, guidance=1.0, class_guidance=1.0):
        """MSE of the model's output against `target` over the noised planes: a scalar.

        x0 `B×c×P×L×L`, y labels `B` or None, some dropped to the null label first (`drop_labels`). Without
        `t`, the levels come from the mixture `self.mix` (`draw_levels`); with mix (1, 0, 0) that is
        one level per clip from `draw_t`. `t` (`B` or `B×2`), `noise` and `clean` (`B×2` bool: that
        modality given as x0 itself at t = 0) may be fixed (tests). A clean modality's planes are left
        out of the mean: there is nothing to denoise in them.

        Model guidance [Tang et al. 2025], the guided prediction learned into the weights: with
        cross-modal scale w = `guidance` and class scale s = `class_guidance` (either ≠ 1), the
        target becomes target + ((w − 1)·sg(out − out_alone) + (s − 1)·sg(out − out_null))/(w + s − 1)
        (`guidance_pull`: out_alone with each stream's partner at pure noise, out_null with the null
        label). Where out_alone and out_null have learned their plain targets, the fixed point is
        out = target + (w − 1)·(target − target_alone) + (s − 1)·(target − target_null): the
        prediction that sampling's cross-modal and classifier-free guidance would form from copies
        (with s = 1, the target is target + (1 − 1/w)·sg(out − out_alone)). The weights on the two
        pulls sum to less than 1, so the target does not run away with the prediction."""
        y = self.drop_labels(y)
        class_guidance = class_guidance if y is not None else 1.0       # no labels: nothing to guide
        if t is None:
            if self.mix[1] == 0 and self.mix[2] == 0:                 # equal levels only: one t per clip
                t = self.draw_t((x0.shape[0],), x0.device)
            else:
                t, clean = self.draw_levels(x0.shape[0], x0.device)
        if noise is None:
            noise = torch.randn_like(x0)
        guided = guidance != 1.0 or class_guidance != 1.0
        if t.dim() == 1 and clean is None and not guided:            # one level for all planes
            x_t, clean_planes = self.q_sample(x0, t, noise), None
        else:
            if t.dim() == 1:
                t = torch.stack([t, t], dim=1)
            if clean is None:
                clean = torch.zeros_like(t, dtype=torch.bool)
            t = t.masked_fill(clean, self.clean)                      # a clean modality is announced as t = 0
            clean_planes = self._per_plane(clean, x0)                 # B×1×P×1×1 bool
            x_t = torch.where(clean_planes, x0, self.q_sample(x0, t, noise))  # clean planes are x0 itself
        out, target = model(x_t, self.model_time(t), y), self.target(x0, noise, t)
        if guided:
            target = target.float() + self.guidance_pull(model, out, x_t, t, y, guidance, class_guidance)
        if clean_planes is None and not self.min_snr_gamma:
            return F.mse_loss(out.float(), target.float())          # in float32 under bf16 autocast
        err = (out.float() - target.float()).pow(2)
        if self.min_snr_gamma:
            err = err * self._shaped(self.min_snr_weight(t), err)    # per clip, or per plane for t B×2
        if clean_planes is None:
            return err.mean()
        weight = (~clean_planes).float()
        err = err * weight
        return err.sum() / weight.expand_as(err).sum().clamp(min=1.0)  # the mean over noised elements

    @torch.no_grad()
    def guidance_pull(self, model, out, x_t, t, y, guidance, class_guidance):
        """((w − 1)·sg(out − out_alone) + (s − 1)·sg(out − out_null))/(w + s − 1), float32
        `B×c×P×L×L` (`loss`), w = guidance, s = class_guidance. out − out_alone: each modality's
        prediction at x_t less the one it makes with its partner replaced by fresh noise at pure
        noise, the difference cross-modal guidance scales at sampling (sampling.joint_denoiser,
        native_denoiser); out − out_null: less the prediction with the null label, the difference
        classifier-free guidance scales. One no-grad forward of the copies the scales ask for: the
        video beside pure-noise audio and the audio beside pure-noise video (w ≠ 1), the clip with
        the null label (s ≠ 1). t `B×2`."""
        video = VIDEO_PLANES.to(x_t.device)[None, None, :, None, None]
        xs, ts, labels = [], [], []
        if guidance != 1.0:
            fresh, pure = torch.randn_like(x_t), torch.full_like(t[:, 0], self.pure_noise)
            xs += [torch.where(video, x_t, fresh), torch.where(video, fresh, x_t)]
            ts += [torch.stack([t[:, 0], pure], 1), torch.stack([pure, t[:, 1]], 1)]
            labels += [y, y]
        if class_guidance != 1.0:
            xs.append(x_t)
            ts.append(t)
            labels.append(torch.full_like(y, self.null_label))
        outs = model(torch.cat(xs), self.model_time(torch.cat(ts)),
                     None if y is None else torch.cat(labels)).float().chunk(len(xs))
        out, pull, total = out.detach().float(), 0.0, guidance + class_guidance - 1.0
        if guidance != 1.0:
            pull = (guidance - 1.0) / total * (out - torch.where(video, outs[0], outs[1]))
        if class_guidance != 1.0:
            pull = pull + (class_guidance - 1.0) / total * (out - outs[-1])
        return pull

    def predict(self, model, x, t, y=None, cfg_scale=1.0):
        """The model's prediction in the form `x0_eps` reads, with classifier-free guidance:
        out_u + s·(out_c − out_u), both from one batched forward; without labels, or at s = 1
        (where the formula is just out_c), one plain forward. t is `B`, or `B×2` per modality."""
        if y is None or cfg_scale == 1.0:
            out = model(x, self.model_time(t), y)
        else:
            null = torch.full_like(y, model.null_label)
            tt = self.model_time(torch.cat([t, t]))
            out_cond, out_uncond = model(torch.cat([x, x]), tt, torch.cat([y, null])).chunk(2)
            out = out_uncond + cfg_scale * (out_cond - out_uncond)
        return self.as_prediction(out, x, t)


# ----------------------------------------------------------------------------------------------
# DDPM
# ----------------------------------------------------------------------------------------------


class DDPM(NoiseProcess):
    """DDPM's forward process and loss, and what every sampler reads from it. Holds tables only.
    Its levels are the integer timesteps 0..num_timesteps−1; a sampling grid takes at most one
    step per timestep.

    DDPM(steps=1000, schedule="linear", prediction="eps", mix=(1, 0, 0))
      steps       num_timesteps, the training timesteps 0..num_timesteps−1
      schedule    the β schedule, "linear" or "cosine" (`make_betas`)
      prediction  what the model outputs: "eps" or "v"; the samplers read ε̂ (`as_prediction`)
    In terms of the x0 error, ε-MSE weighs step t by SNR_t = ᾱ/(1−ᾱ) and v-MSE by 1 + SNR_t: at the
    noisy steps, where a clip's layout (when the disc hits a wall, when the click sounds) is
    decided, v gives 10-1000× the weight ε does.
    """
    objective = "ddpm"
    level_dtype = torch.long

    def __init__(self, steps=1000, schedule="linear", prediction="eps", mix=(1.0, 0.0, 0.0), min_snr_gamma=0.0):
        if prediction not in ("eps", "v"):
            raise ValueError(f"diffusion: unknown prediction {prediction!r}; choose 'eps' or 'v'")
        super().__init__(mix, min_snr_gamma)
        self.num_timesteps = steps
        self.pure_noise = steps - 1                                   # the level that holds no signal
        self.max_steps = steps                                        # a grid of every timestep at most
        self.prediction = prediction
        self.betas = make_betas(schedule, steps)                     # num_timesteps, float64
        self.alphas_cumprod = torch.cumprod(1 - self.betas, dim=0)   # ᾱ_t, num_timesteps, float64
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1 - self.alphas_cumprod).sqrt()

    def _coefs(self, t, x):
        """(√ᾱ_t, √(1−ᾱ_t)) shaped to broadcast over x: `B×1×…×1` for t `B`, `B×1×P×1×…` for t `B×2`."""
        return (self._shaped(self.sqrt_alphas_cumprod.to(t.device)[t], x),
                self._shaped(self.sqrt_one_minus_alphas_cumprod.to(t.device)[t], x))

    def draw_t(self, shape, device):
        """Timesteps uniform over 0..num_timesteps−1, as DDPM draws them."""
        return torch.randint(0, self.num_timesteps, shape, device=device)

    def q_sample(self, x0, t, noise):
        """x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε, with t `B` or per modality `B×2`: the signal shrinks by √ᾱ_t
        while noise fills the variance back to 1, so a unit-variance x0 gives a unit-variance x_t."""
        signal, spread = self._coefs(t, x0)
        return signal * x0 + spread * noise

    def target(self, x0, noise, t):
        """What the network regresses: ε, or v = √ᾱ·ε − √(1−ᾱ)·x0."""
        if self.prediction == "v":
            signal, spread = self._coefs(t, x0)
            return signal * noise - spread * x0
        return noise

    def min_snr_weight(self, t):
        """min(SNR_t, γ)/SNR_t for ε (x0 = (x − σ·ε)/α) and min(SNR_t, γ)/(1 + SNR_t) for v
        (x0 = α·x − σ·v), with SNR_t = ᾱ_t/(1 − ᾱ_t)."""
        ab = self.alphas_cumprod.to(t.device)[t].float()
        snr = ab / (1 - ab)
        return snr.clamp(max=self.min_snr_gamma) / (snr + 1 if self.prediction == "v" else snr)

    def model_time(self, t):
        """The timestep index itself: the network embeds DDPM's t as it is."""
        return t

    def as_prediction(self, out, x, t):
        """The model's output as ε̂: unchanged for ε-prediction, √(1−ᾱ)·x_t + √ᾱ·v̂ for v."""
        if self.prediction == "v":
            signal, spread = self._coefs(t, x)
            out = spread * x + signal * out
        return out

    # ---- the path as the samplers read it, at one level of the grid (a Python int) ----

    def level_at(self, fraction):
        """The timestep `fraction` of the way from clean to pure noise."""
        return int(fraction * self.num_timesteps)

    def share_of(self, level):
        """How far timestep `level` is from clean to pure noise, in [0, 1)."""
        return level / self.num_timesteps

    def alpha_sigma(self, level):
        """(α_t, σ_t) = (√ᾱ_t, √(1−ᾱ_t)) as Python floats."""
        ab = self.alphas_cumprod[level].item()
        return math.sqrt(ab), math.sqrt(1 - ab)

    def x0_eps(self, x, eps, level):
        """(x̂0, ε̂) from ε̂ at timestep `level`: x̂0 = (x − σ_t·ε̂)/α_t inverts q_sample."""
        alpha, sigma = self.alpha_sigma(level)
        return (x - sigma * eps) / alpha, eps

    def pred_of_x0(self, x, x0, level):
        """The ε̂ under which x at timestep `level` denoises to x0: (x − α_t·x0)/σ_t."""
        alpha, sigma = self.alpha_sigma(level)
        return (x - alpha * x0) / sigma

    def levels(self, steps, grid="time"):
        """The `steps` levels a sampler evaluates, ascending, ending at num_timesteps−1: uniform in t
        ("time") or in log-SNR ("logsnr"); after the lowest (t = 0) the sampler returns x̂0."""
        if grid == "time":
            return respaced_timesteps(steps, self.num_timesteps).tolist()
        if grid == "logsnr":
            return logsnr_timesteps(steps, self.alphas_cumprod).tolist()
        raise ValueError(f"grid must be one of time, logsnr, not {grid!r}")


# ----------------------------------------------------------------------------------------------
# Rectified flow
# ----------------------------------------------------------------------------------------------


class Flow(NoiseProcess):
    """Rectified flow [ours, after SD3 and the audio-video DiTs of 2025-26]: the straight path
    x_t = (1 − t)·x0 + t·ε, t ∈ [0, 1], and the network regresses the velocity v = ε − x0.

    Flow(shift=1.0, mix=(1, 0, 0))
      shift   the level density and the sampling grid are warped by t ↦ s·t / (1 + (s − 1)·t):
              s > 1 moves weight to the noisy levels, where a clip's layout is decided.
    Training draws t = shift(sigmoid(n)), n ~ N(0, 1): SD3's logit-normal density, which leaves
    the near-clean and near-noise ends (where the velocity is easy) with little weight. The model
    embeds 1000·t, the range of DDPM's indices, so one STDiT serves both objectives.
    """
    objective = "flow"
    level_dtype = torch.float32
    pure_noise = 1.0
    max_steps = 1000                 # DDPM's count: --steps allows one range for both objectives

    def __init__(self, shift=1.0, mix=(1.0, 0.0, 0.0), min_snr_gamma=0.0):
        if shift <= 0:
            raise ValueError(f"diffusion: flow shift must be > 0, got {shift}")
        super().__init__(mix, min_snr_gamma)
        self.shift = shift

    def warp(self, t):
        """t ↦ s·t / (1 + (s − 1)·t): the identity at s = 1; fixes 0 and 1."""
        return self.shift * t / (1 + (self.shift - 1) * t)

    def draw_t(self, shape, device):
        """Levels from the shifted logit-normal density, float32 in (0, 1)."""
        return self.warp(torch.sigmoid(torch.randn(shape, device=device)))

    def q_sample(self, x0, t, noise):
        """x_t = (1 − t)·x0 + t·ε, with t `B` or per modality `B×2`."""
        t = self._shaped(t, x0)
        return (1 - t) * x0 + t * noise

    def target(self, x0, noise, t):
        """The velocity v = dx_t/dt = ε − x0."""
        return noise - x0

    def min_snr_weight(self, t):
        """min(SNR_t, γ)·t², with SNR_t = ((1 − t)/t)² (x0 = x − t·v); 0 at t = 0."""
        t = t.float()
        return ((1 - t) / t).square().clamp(max=self.min_snr_gamma) * t.square()

    def model_time(self, t):
        """1000·t, so the timestep embedding sees DDPM's range."""
        return t * 1000.0

    def as_prediction(self, out, x, t):
        """v̂ as it is: `x0_eps` reads the velocity."""
        return out

    def level_at(self, fraction):
        """The level `fraction` of the way from clean to pure noise: t itself."""
        return float(fraction)

    def share_of(self, level):
        """How far level t is from clean to pure noise: t itself."""
        return float(level)

    def alpha_sigma(self, level):
        """(α_t, σ_t) = (1 − t, t)."""
        return 1.0 - level, float(level)

    def x0_eps(self, x, v, level):
        """(x̂0, ε̂) from v̂ at level t: x̂0 = x − t·v̂ and ε̂ = x + (1 − t)·v̂, finite at t = 1 too."""
        return x - level * v, x + (1 - level) * v

    def pred_of_x0(self, x, x0, level):
        """The v̂ under which x at level t denoises to x0: (x − x0)/t."""
        return (x - x0) / level

    def levels(self, steps, grid="time"):
        """The `steps` levels a sampler evaluates, ascending, ending at 1 (pure noise): k/steps
        for k = 1..steps, warped by the shift; after the lowest the sampler returns x̂0."""
        if grid != "time":
            raise ValueError(f"grid must be time for objective flow, not {grid!r}")
        if steps < 1:
            raise ValueError(f"steps must be at least 1, not {steps}")
        return [self.warp(k / steps) for k in range(1, steps + 1)]

    # ---- shortcut steps [ours, after Frans et al. 2025, "One step diffusion via shortcut models"] ----
    # The sampling grid is uniform in u, the level before the shift: t = warp(u). A step of size δ
    # (a power of two) goes from u to u − δ. The network, told δ (STDiT's `step`), outputs the
    # average velocity over that step, (x_t − x_r)/(t − r), so x_r = x_t − (t − r)·v̂ follows the
    # ODE in one call; δ = 0 is the instantaneous velocity that `loss` teaches.

    def shortcut_loss(self, model, x0, y=None, guidance=1.0, class_guidance=1.0):
        """The shortcut phase's loss, a scalar: one clip in SHORTCUT_SHARE (at least one) learns a
        step by self-consistency (`consistency_loss`), the rest the velocity (`loss`, with model
        guidance at `guidance` and `class_guidance`); the two means are weighed by their clips.
        x0 `B×c×P×L×L`, y `B` or None (each clip's label dropped once, in the part it goes to)."""
        n = max(1, x0.shape[0] // SHORTCUT_SHARE)
        part = lambda lo, hi: None if y is None else y[lo:hi]    # noqa: E731 (the labels of those clips)
        consistency = self.consistency_loss(model, x0[:n], part(0, n))
        if n == x0.shape[0]:
            return consistency
        velocity = self.loss(model, x0[n:], part(n, None), guidance=guidance, class_guidance=class_guidance)
        return (n * consistency + (x0.shape[0] - n) * velocity) / x0.shape[0]

    def consistency_loss(self, model, x0, y=None, *, k=None, u=None, clean=None, noise=None):
        """Self-consistency: the network's step of δ = 2^-k from u (levels t = warp(u),
        t_mid = warp(u − δ/2), r = warp(u − δ)) regresses the two half steps it makes itself, under no
        gradient: v1 at x_t, x_mid = x_t − (t − t_mid)·v1, v2 at x_mid, and the target
        ((t − t_mid)·v1 + (t_mid − r)·v2)/(t − r), the average velocity of the two.
        The finest halves (δ/2 = 2^-SHORTCUT_LEVELS) are the instantaneous velocity (step 0), which
        `loss` teaches; each coarser step learns from the finer ones. A scalar.

        x0 `B×c×P×L×L`. Drawn unless given (tests): k `B` long, uniform over 0..SHORTCUT_LEVELS − 1;
        u `B`, a multiple of δ in (0, 1] drawn uniformly, so each step lies on a sampling grid;
        clean `B×2` bool, one modality clean (as A2V / V2A sample it) in the mixture's share of
        one-clean among equal and one-clean pairs, else both at t (joint); noise like x0. A class
        label, where the model has them, is dropped once (`drop_labels`), the same in all three forwards."""
        batch, device = x0.shape[0], x0.device
        y = self.drop_labels(y)
        if k is None:
            k = torch.randint(0, SHORTCUT_LEVELS, (batch,), device=device)
        width = 0.5 ** k.double()                                     # δ, exact in float64
        if u is None:
            u = (torch.floor(torch.rand(batch, device=device, dtype=torch.float64) / width) + 1) * width
        t, mid, r = (self.warp(u - f * width).float() for f in (0.0, 0.5, 1.0))
        half = torch.where(k == SHORTCUT_LEVELS - 1, 0.0, 0.5 * width).float()
        if clean is None:
            one_clean = self.mix[2] / max(self.mix[0] + self.mix[2], 1e-12)
            which = torch.rand(batch, device=device) < 0.5
            some = torch.rand(batch, device=device) < one_clean
            clean = torch.stack([some & which, some & ~which], dim=1)
        noise = torch.randn_like(x0) if noise is None else noise
        pair = lambda lv: torch.stack([lv, lv], dim=1).masked_fill(clean, self.clean)  # noqa: E731 (B×2)
        clean_planes = self._per_plane(clean, x0)                     # B×1×P×1×1 bool
        x_t = torch.where(clean_planes, x0, self.q_sample(x0, pair(t), noise))
        with torch.no_grad():
            v1 = model(x_t, self.model_time(pair(t)), y, step=self.model_time(half)).float()
            x_mid = torch.where(clean_planes, x0, x_t - self._shaped(t - mid, x0) * v1)
            v2 = model(x_mid, self.model_time(pair(mid)), y, step=self.model_time(half)).float()
            target = (self._shaped(t - mid, v1) * v1 + self._shaped(mid - r, v2) * v2) / self._shaped(t - r, v1)
        out = model(x_t, self.model_time(pair(t)), y, step=self.model_time(width.float())).float()
        weight = (~clean_planes).float()
        err = (out - target).pow(2) * weight
        return err.sum() / weight.expand_as(err).sum().clamp(min=1.0)  # the mean over noised elements


def from_config(cfg) -> NoiseProcess:
    """The forward process a config trains: `DDPM` or rectified flow (`Flow`)."""
    mix = (cfg.mix_equal, cfg.mix_independent, cfg.mix_clean)
    if cfg.objective == "flow":
        process = Flow(shift=cfg.flow_shift, mix=mix, min_snr_gamma=cfg.min_snr_gamma)
    else:
        process = DDPM(steps=cfg.diffusion_steps, schedule=cfg.schedule, prediction=cfg.prediction, mix=mix,
                       min_snr_gamma=cfg.min_snr_gamma)
    process.learned_guidance = cfg.learned_guidance
    process.learned_class_guidance = cfg.learned_class_guidance
    process.class_dropout, process.null_label = cfg.class_dropout, cfg.num_classes
    process.shortcut = cfg.shortcut_steps > 0
    return process

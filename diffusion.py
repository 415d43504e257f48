"""
Diffusion over the stacked latent: PAPER.md §5.

  schedules      linear β 1e-4 → 0.02 (DDPM) and cosine (Nichol & Dhariwal), 1000 steps   [paper; ours]
  q_sample       x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε                                              [DDPM]
  loss           uniform t, MSE on ε (DDPM) or on v = √ᾱ·ε − √(1−ᾱ)·x0 (Salimans & Ho)  [DDPM; ours]
  sample         DDPM ancestral (respaced) and DDIM (η), classifier-free guidance,
                 known-plane replacement for zero-shot A2V / V2A                [ours, MM-Diffusion]
                 plus reconstruction guidance on the free planes                 [ours, Ho et al. 2022]

The model is any callable `model(x_t, t, y) → ε̂` (or v̂) with the shape of x_t (model.STDiT); it
is always called with ORIGINAL timestep indices 0..T−1, also when sampling on a respaced grid, so one
trained network serves every sampler and step count. Samplers only see ε̂: a v̂ is converted by
`predict_eps`, so both parameterisations share every sampling line.

Conventions: the schedule tables are float64 (ᾱ near 1e-5 at t≈999 needs the digits), and their
entries are cast to the latent's dtype only at use. x0 predictions are NOT clipped: the latents are
scaled to unit variance, not bounded to [-1, 1] like pixels, so there is no range to clip to.
"""
import math

import torch
import torch.nn.functional as F
from tqdm import tqdm

# ----------------------------------------------------------------------------------------------
# Noise schedules
# ----------------------------------------------------------------------------------------------


def make_betas(schedule, steps):
    """β_1..β_T as a float64 tensor of length `steps`."""
    if schedule == "linear":
        # DDPM's 1e-4 → 0.02 at T=1000; scaled by 1000/T so other T keep the same end-point ᾱ_T.
        scale = 1000.0 / steps
        return torch.linspace(scale * 1e-4, scale * 0.02, steps, dtype=torch.float64)
    if schedule == "cosine":
        # ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s)·π/2); β clipped at 0.999 so the last
        # step (where ᾱ → 0) does not divide by zero.
        s = 0.008
        t = torch.arange(steps + 1, dtype=torch.float64) / steps
        f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
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


# ----------------------------------------------------------------------------------------------
# The diffusion process
# ----------------------------------------------------------------------------------------------


class Diffusion:
    """A fixed forward process and its samplers. Holds tables only, no weights."""

    def __init__(self, steps=1000, schedule="linear", prediction="eps"):
        if prediction not in ("eps", "v"):
            raise ValueError(f"diffusion: unknown prediction {prediction!r}; choose 'eps' or 'v'")
        self.num_timesteps = steps
        self.schedule, self.prediction = schedule, prediction
        self.betas = make_betas(schedule, steps)                     # T, float64
        self.alphas_cumprod = torch.cumprod(1 - self.betas, dim=0)   # ᾱ_t, T, float64
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1 - self.alphas_cumprod).sqrt()

    @classmethod
    def from_config(cls, cfg):
        return cls(steps=cfg.diffusion_steps, schedule=cfg.schedule, prediction=cfg.prediction)

    @staticmethod
    def _at(table, t, x):
        """table[t] for a batch `t: B` as a `B×1×…×1` tensor of x's dtype and device."""
        values = table.to(t.device)[t].to(x.dtype)
        return values.reshape(-1, *([1] * (x.dim() - 1)))

    # ---- forward process and training ----

    def q_sample(self, x0, t, noise):
        """x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε: the signal shrinks by √ᾱ_t while noise fills the variance
        back to 1, so a unit-variance x0 gives a unit-variance x_t at every t."""
        return self._at(self.sqrt_alphas_cumprod, t, x0) * x0 + self._at(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def loss(self, model, x0, y=None, *, t=None, noise=None):
        """MSE of the model's ε̂ (or v̂) at t ~ U{0..T−1}: a scalar. `t` and `noise` may be fixed (tests).

        In terms of the x0 error, ε-MSE weighs step t by SNR_t = ᾱ/(1−ᾱ) and v-MSE by 1 + SNR_t: at
        the noisy steps, where a clip's layout (when the disc hits a wall, when the click sounds) is
        decided, v gives 10-1000× the weight ε does."""
        if t is None:
            t = torch.randint(0, self.num_timesteps, (x0.shape[0],), device=x0.device)
        if noise is None:
            noise = torch.randn_like(x0)
        out = model(self.q_sample(x0, t, noise), t, y)
        if self.prediction == "v":
            target = self._at(self.sqrt_alphas_cumprod, t, x0) * noise - self._at(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0
        else:
            target = noise
        return F.mse_loss(out.float(), target.float())              # in float32 under bf16 autocast

    # ---- sampling ----

    def predict_eps(self, model, x, t, y=None, cfg_scale=1.0):
        """ε̂ with classifier-free guidance: out_u + s·(out_c − out_u), both from one batched forward.
        Without labels, or at s = 1 (where the formula is just out_c), a single plain forward. A v̂ is
        turned into ε̂ = √(1−ᾱ)·x_t + √ᾱ·v̂ (the guidance combination is linear, so either order)."""
        if y is None or cfg_scale == 1.0:
            out = model(x, t, y)
        else:
            null = torch.full_like(y, model.null_label)
            out_cond, out_uncond = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null])).chunk(2)
            out = out_uncond + cfg_scale * (out_cond - out_uncond)
        if self.prediction == "v":
            out = self._at(self.sqrt_one_minus_alphas_cumprod, t, x) * x + self._at(self.sqrt_alphas_cumprod, t, x) * out
        return out

    @torch.no_grad()
    def sample(self, model, shape, *, sampler="ddim", steps=50, eta=0.0, y=None, cfg_scale=1.0,
               known=None, known_mask=None, guidance=0.0, noise=None, generator=None, progress=False):
        """Draw x0 of `shape` (B×c×N×L×L) from noise; returns float32.

        sampler   "ddim" (η = eta; 0 is deterministic given the start noise) or "ddpm" (ancestral,
                  posterior variance β̃, the same as DDIM at η = 1 on the same grid).
        steps     respaced to this many timesteps, evenly spread over 0..T−1.
        y, cfg_scale  class labels `B` and the guidance scale s.
        known, known_mask  zero-shot A2V / V2A: `known` a clean latent of `shape`; `known_mask` a
                  bool over the N frame axis (length N) or broadcastable to `shape`. Masked frames
                  are replaced by q_sample(known, t) before every model call, so the model denoises
                  the rest in agreement with them; at the end they are exactly `known`.
        guidance  reconstruction guidance weight w (with `known`; 0 = replacement alone) [Ho et al.
                  2022, as MM-Diffusion's zero-shot transfer]: the free planes' x̂0 moves by
                  −(w·√ᾱ/2)·∇ₓ‖x̂0[known] − known‖², towards what makes the model's own denoising of the
                  known planes agree with them. Replacement alone only informs the free planes through
                  the model's attention to the known ones, which a joint model may barely use; the
                  gradient also reaches them through the known planes' dependence on the free ones.
        noise     the starting x_T (else drawn from `generator`).
        """
        if sampler not in ("ddim", "ddpm"):
            raise ValueError(f"diffusion: unknown sampler {sampler!r}; choose 'ddim' or 'ddpm'")
        if (known is None) != (known_mask is None):
            raise ValueError("diffusion: pass `known` and `known_mask` together")
        device = noise.device if noise is not None else next(model.parameters()).device

        def randn():
            return torch.randn(shape, generator=generator, device=device, dtype=torch.float32)

        x = noise.to(device=device, dtype=torch.float32) if noise is not None else randn()
        if tuple(x.shape) != tuple(shape):
            raise ValueError(f"diffusion: noise has shape {tuple(x.shape)}, expected {tuple(shape)}")
        if known is not None:
            known = known.to(device=device, dtype=torch.float32)
            known_mask = torch.as_tensor(known_mask, dtype=torch.bool, device=device)
            if known_mask.dim() == 1 and known_mask.shape[0] == shape[2]:
                known_mask = known_mask.reshape(1, 1, -1, *([1] * (len(shape) - 3)))  # over the N axis
            known_mask = known_mask.expand(shape)

        timesteps = respaced_timesteps(steps, self.num_timesteps).tolist()
        was_training = model.training
        model.eval()                                                  # no label dropout while sampling
        try:
            for i in tqdm(range(len(timesteps) - 1, -1, -1), disable=not progress, desc=sampler):
                t_batch = torch.full((shape[0],), timesteps[i], device=device, dtype=torch.long)
                if known is not None:                                 # fresh noise: x_t of the known latent
                    x = torch.where(known_mask, self.q_sample(known, t_batch, randn()), x)
                if known is not None and guidance > 0:
                    eps = self.guided_eps(model, x, t_batch, y, cfg_scale, known, known_mask, guidance)
                else:
                    eps = self.predict_eps(model, x, t_batch, y, cfg_scale).float()
                t_prev = timesteps[i - 1] if i > 0 else None
                x = self.step(x, eps, timesteps[i], t_prev, sampler, eta, randn)
        finally:
            model.train(was_training)
        if known is not None:
            x = torch.where(known_mask, known, x)                     # the known planes, exactly
        return x

    def guided_eps(self, model, x, t, y, cfg_scale, known, known_mask, w):
        """ε̂ after reconstruction guidance (see `sample`): one forward and one backward pass.
        x, known `B×c×N×L×L` float32, known_mask bool of that shape, t `B` (one timestep)."""
        ab = self._at(self.alphas_cumprod, t, x)
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            eps = self.predict_eps(model, x, t, y, cfg_scale).float()
            x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
            err = (x0 - known).pow(2).masked_fill(~known_mask, 0.0).sum()
            grad, = torch.autograd.grad(err, x)
        x, eps, x0 = x.detach(), eps.detach(), x0.detach()
        x0 = x0 - torch.where(known_mask, 0.0, 0.5 * w * ab.sqrt() * grad)  # the known planes are replaced anyway
        return (x - ab.sqrt() * x0) / (1 - ab).sqrt()                 # the ε that this x̂0 implies at x

    def step(self, x, eps, t, t_prev, sampler, eta, randn):
        """One reverse step x_t → x_{t_prev} on the respaced grid (t_prev=None: the last step, to x0)."""
        ab_t = self.alphas_cumprod[t].item()
        ab_prev = self.alphas_cumprod[t_prev].item() if t_prev is not None else 1.0  # clean: ᾱ = 1
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

"""
The training recipe: each stage's default steps, batch, learning rate and optimizer, which weights
Muon updates, and the learning-rate schedule. train.py trains with it, bench.py and memory.py time
and count each stage with it, so all three import it from here; every function takes its settings as
arguments and reads no script's globals.

  STAGE_DEFAULTS          what `python train.py --stage ae|dit` runs when a setting is left at 0 / "auto"
  TRAIN_CLIPS             the size of the default training set
  muon_params(model)      the 2D weight matrices inside the model's transformer blocks (what Muon updates)
  Muon                    momentum SGD with each update matrix orthogonalised (Newton-Schulz)
  make_optimizer(...)     AdamW over every weight, or Muon for those matrices + AdamW for the rest
  lr_at(step, ...)        linear warm-up, then cosine decay to 10% of the peak

The split follows nanoGPT's `configure_optimizers`: the model names its transformer block lists
(`block_lists`) and the recipe asks it, rather than matching parameter names.
"""
import math
from collections import defaultdict

import torch

from config import need

# ----------------------------------------------------------------------------- stage defaults
# The main job at tiny; RESULTS.md's "training recipe" section measures each choice.
STAGE_DEFAULTS = {
    # the MDSA autoencoder: AdamW, 1,000 steps of 8 clips
    "ae": dict(max_steps=1000, batch_size=8, lr=1e-3, warmup_steps=200, optimizer="adamw"),
    # the STDiT denoiser: Muon, 6,000 steps of 16 latents
    "dit": dict(max_steps=6000, batch_size=16, lr=3e-3, warmup_steps=200, optimizer="muon"),
}

TRAIN_CLIPS = 4000  # BounceClick clips in the default training set; the DiT stage encodes each once

# Newton-Schulz iterations that orthogonalise each Muon update (torch.optim.Muon's default is 5): 3
# learn sync and motion as well at 3/5 of the products (RESULTS.md, the training recipe)
MUON_NS_STEPS = 3


# ----------------------------------------------------------------------------- optimizers
class Optimizers:
    """Several torch optimizers stepped as one, each over its own parameters; `param_groups` lists all
    their groups, so setting the learning rate reaches every one."""

    def __init__(self, *opts):
        self.opts = opts

    @property
    def param_groups(self) -> list:  # read each time: load_state_dict replaces an optimizer's group dicts
        return [g for o in self.opts for g in o.param_groups]

    def zero_grad(self, set_to_none=True):
        for o in self.opts:
            o.zero_grad(set_to_none=set_to_none)

    def step(self):
        for o in self.opts:
            o.step()

    def state_dict(self) -> list:
        return [o.state_dict() for o in self.opts]

    def load_state_dict(self, states: list):
        for o, s in zip(self.opts, states, strict=True):
            o.load_state_dict(s)


def muon_params(model) -> list:
    """[(name, parameter)] of the 2D weight matrices inside the model's transformer blocks (attention
    and MLP projections, adaLN modulation), in `model.named_parameters()` order: what Muon updates.

    The blocks are the module lists the model names in its `block_lists` (MDSA: enc_blocks and
    dec_blocks; STDiT: blocks). Biases, norms and gates (1D) stay with AdamW, and so does everything
    outside the blocks: embeddings, convolutions, the output layers."""
    chosen = {id(p) for name in getattr(model, "block_lists", ()) for p in getattr(model, name).parameters()
              if p.ndim == 2}
    return [(name, p) for name, p in model.named_parameters() if id(p) in chosen]


# ----------------------------------------------------------------------------- Muon
# The quintic Newton-Schulz coefficients of Keller Jordan's Muon (and torch.optim.Muon): they push
# every singular value of the normalised update towards ~1 in a few iterations.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalise(G: torch.Tensor, steps: int, dtype: torch.dtype) -> torch.Tensor:
    """Newton-Schulz on a stack of matrices `N×m×n` → `N×m×n` in `dtype`: each G's singular vectors
    kept and its singular values pushed towards 1 (within about 0.3-1.3 after 3 iterations for a
    spectrum spanning a decade, test_train.py). X ← a·X + (b·A + c·A²)·X with A = X·Xᵀ, on the wide
    orientation (m ≤ n), so A is the small m×m."""
    a, b, c = NS_COEFFICIENTS
    tall = G.size(-2) > G.size(-1)
    X = G.to(dtype).mT if tall else G.to(dtype)
    X = X / X.norm(dim=(-2, -1), keepdim=True).clamp(min=1e-7)    # spectral norm ≤ Frobenius norm = 1
    for _ in range(steps):
        A = X @ X.mT
        X = torch.baddbmm(X, torch.baddbmm(A, A, A, beta=b, alpha=c), X, beta=a)
    return X.mT if tall else X


class Muon(torch.optim.Optimizer):
    """Muon [Jordan et al. 2024], the update of torch.optim.Muon(nesterov=True,
    adjust_lr_fn="match_rms_adamw"): momentum m ← μ·m + (1 − μ)·g, the Nesterov direction
    (1 − μ)·g + μ·m orthogonalised by `orthogonalise`, then W ← W·(1 − lr·wd) − lr·0.2·√max(m, n)·O.
    The factor 0.2·√max(m, n) gives O the RMS of an AdamW update, so one lr serves both optimizers.

    Two differences, both for speed: the matrices of one shape go through Newton-Schulz as one
    batched product (a transformer block's matrices repeat in every block), and the products run in
    `ns_dtype`: bf16 (torch's, and the same update bit for bit) where the device multiplies bf16
    fast, float32 on a CPU without fast bf16, where a bf16 product runs tens of times slower than a
    float32 one (BENCHMARKS.md). The state (`momentum_buffer` per weight) and the groups' `lr`,
    `momentum`, `weight_decay` and `ns_steps` have torch's names, so checkpoints resume either way."""

    def __init__(self, params, lr: float, momentum: float = 0.95, weight_decay: float = 0.0,
                 ns_steps: int = MUON_NS_STEPS, ns_dtype: torch.dtype = torch.bfloat16):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, ns_steps=ns_steps))
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            by_shape = defaultdict(list)
            for p in group["params"]:
                if p.grad is not None:
                    need(p.ndim == 2, f"Muon updates 2D weight matrices, not a tensor of shape {tuple(p.shape)}")
                    by_shape[p.shape].append(p)
            for shape, weights in by_shape.items():
                grads = [p.grad for p in weights]
                bufs = [self.state[p].setdefault("momentum_buffer", torch.zeros_like(p)) for p in weights]
                torch._foreach_lerp_(bufs, grads, 1 - mu)
                update = torch.stack(grads).lerp_(torch.stack(bufs), mu)   # Nesterov: (1 − μ)·g + μ·m
                update = orthogonalise(update, group["ns_steps"], self.ns_dtype).to(weights[0].dtype)
                if wd:
                    torch._foreach_mul_(weights, 1 - lr * wd)
                torch._foreach_add_(weights, list(update.unbind(0)), alpha=-lr * 0.2 * math.sqrt(max(shape)))


def make_optimizer(model, kind: str, lr: float, weight_decay: float = 0.0, fused: bool = False,
                   ns_bf16: bool = True) -> Optimizers:
    """AdamW over every weight, or for kind "muon": `Muon` for `muon_params(model)`, AdamW for the
    rest, as the nanoGPT speedruns split them. `ns_bf16`: Muon's Newton-Schulz in bf16, as torch's,
    where this device multiplies bf16 fast (pipeline.use_bf16 at "auto"), else in float32, whatever
    precision the model trains in. Asking for Muon where the model has no block matrices exits."""
    matrices = muon_params(model) if kind == "muon" else []
    if kind == "muon":
        need(matrices, f"--optimizer muon: {type(model).__name__} has no 2D weight matrices in transformer "
             "blocks (block_lists) for Muon to update; use --optimizer adamw")
    chosen = {id(p) for _, p in matrices}
    rest = [p for _, p in model.named_parameters() if id(p) not in chosen]
    adamw = torch.optim.AdamW(rest, lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay, fused=fused)
    if not matrices:
        return Optimizers(adamw)
    muon = Muon([p for _, p in matrices], lr=lr, weight_decay=weight_decay,
                ns_dtype=torch.bfloat16 if ns_bf16 else torch.float32)
    return Optimizers(muon, adamw)


# ----------------------------------------------------------------------------- the DiT's phases
def dit_phase(cfg, step: int, max_steps: int) -> tuple:
    """(guided, shortcut) of DiT step `step` (from 0) of `max_steps`: whether it trains toward the
    learned-guidance target (its last cfg.learned_guidance_steps, where the config learns cross-modal
    or class guidance) and with the shortcut loss (its last cfg.shortcut_steps). train.py trains by
    it; bench.py counts by it."""
    learns = cfg.learned_guidance != 1 or cfg.learned_class_guidance != 1
    guided = learns and step >= max_steps - cfg.learned_guidance_steps
    return guided, step >= max_steps - cfg.shortcut_steps


# ----------------------------------------------------------------------------- schedule
def lr_at(step: int, lr: float, warmup_steps: int, max_steps: int) -> float:
    """The learning rate of optimizer step `step` (from 0): linear warm-up over `warmup_steps` to the
    peak `lr`, then cosine decay to 10% of it at `max_steps`."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

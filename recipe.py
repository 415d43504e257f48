"""
The training recipe: each stage's default steps, batch, learning rate and optimizer, which weights
Muon updates, and the learning-rate schedule. train.py trains with it, bench.py and memory.py time
and count each stage with it, so all three import it from here; every function takes its settings as
arguments and reads no script's globals.

  STAGE_DEFAULTS          what `python train.py --stage ae|dit` runs when a setting is left at 0 / "auto"
  TRAIN_CLIPS             the size of the default training set
  muon_params(model)      the 2D weight matrices inside the model's transformer blocks (what Muon updates)
  make_optimizer(...)     AdamW over every weight, or Muon for those matrices + AdamW for the rest
  lr_at(step, ...)        linear warm-up, then cosine decay to 10% of the peak
  require_muon()          a one-line exit where the installed torch has no torch.optim.Muon

The split follows nanoGPT's `configure_optimizers`: the model names its transformer block lists
(`block_lists`) and the recipe asks it, rather than matching parameter names.
"""
import math

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

MUON_TORCH = "2.9.0"  # the first torch release with torch.optim.Muon
# Newton-Schulz iterations that orthogonalise each Muon update (torch's default is 5): 3 learn sync
# and motion as well at 3/5 of the products (RESULTS.md, the training recipe)
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


def require_muon(asked: str = "--optimizer muon"):
    """Exit with one line naming the torch release Muon needs, and the installed one, unless this
    torch has torch.optim.Muon. `asked` says what chose Muon."""
    need(hasattr(torch.optim, "Muon"), f"{asked} needs torch>={MUON_TORCH} (torch.optim.Muon), but this is "
         f"torch {torch.__version__}: upgrade torch, or train with --optimizer adamw")


def muon_params(model) -> list:
    """[(name, parameter)] of the 2D weight matrices inside the model's transformer blocks (attention
    and MLP projections, adaLN modulation), in `model.named_parameters()` order: what Muon updates.

    The blocks are the module lists the model names in its `block_lists` (MDSA: enc_blocks and
    dec_blocks; STDiT: blocks). Biases, norms and gates (1D) stay with AdamW, and so does everything
    outside the blocks: embeddings, convolutions, the output layers."""
    chosen = {id(p) for name in getattr(model, "block_lists", ()) for p in getattr(model, name).parameters()
              if p.ndim == 2}
    return [(name, p) for name, p in model.named_parameters() if id(p) in chosen]


def make_optimizer(model, kind: str, lr: float, weight_decay: float = 0.0, fused: bool = False) -> Optimizers:
    """AdamW over every weight, or for kind "muon": Muon (momentum, then each update matrix
    orthogonalised by Newton-Schulz) for `muon_params(model)`, AdamW for the rest, as the nanoGPT
    speedruns split them. Muon's update is rescaled to AdamW's RMS ("match_rms_adamw"), so one lr
    serves both. Asking for Muon where the model has no block matrices, or torch has no Muon, exits."""
    matrices = muon_params(model) if kind == "muon" else []
    if kind == "muon":
        require_muon()
        need(matrices, f"--optimizer muon: {type(model).__name__} has no 2D weight matrices in transformer "
             "blocks (block_lists) for Muon to update; use --optimizer adamw")
    chosen = {id(p) for _, p in matrices}
    rest = [p for _, p in model.named_parameters() if id(p) not in chosen]
    adamw = torch.optim.AdamW(rest, lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay, fused=fused)
    if not matrices:
        return Optimizers(adamw)
    muon = torch.optim.Muon([p for _, p in matrices], lr=lr, weight_decay=weight_decay, momentum=0.95,
                            adjust_lr_fn="match_rms_adamw", ns_steps=MUON_NS_STEPS)
    return Optimizers(muon, adamw)


# ----------------------------------------------------------------------------- the DiT's phases
def dit_phase(cfg, step: int, max_steps: int) -> tuple:
    """(guided, shortcut) of DiT step `step` (from 0) of `max_steps`: whether it trains toward the
    learned-guidance target (its last cfg.learned_guidance_steps, where the config learns guidance)
    and with the shortcut loss (its last cfg.shortcut_steps). train.py trains by it; bench.py counts by it."""
    guided = cfg.learned_guidance != 1 and step >= max_steps - cfg.learned_guidance_steps
    return guided, step >= max_steps - cfg.shortcut_steps


# ----------------------------------------------------------------------------- schedule
def lr_at(step: int, lr: float, warmup_steps: int, max_steps: int) -> float:
    """The learning rate of optimizer step `step` (from 0): linear warm-up over `warmup_steps` to the
    peak `lr`, then cosine decay to 10% of it at `max_steps`."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

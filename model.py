"""
The 3D latent and the STDiT denoiser: PAPER.md §4.

MDSA (autoencoder.py) turns a clip into six 2D latent planes, three per modality, all `c×L×L`.
This file stacks them into one "video-like" latent `B×c×P×L×L` (P = 6 planes) and defines the
transformer that predicts the noise in it. It does not import the autoencoder: it only needs the
plane side L and the channel count c, both read from the `Config`.

  stack_planes / unstack_planes   the unified 3D latent                                    [paper]
  VIDEO_PLANES                    which of the P planes are video (the rest are audio)
  latent_shape                    per-sample (c, P, L, L), projected or full               [ours]
  STDiT                           spatio-temporal DiT over the six planes        [paper; block ours]
    PatchEmbed                    (1, p, p) patches, one token per patch of a plane         [ours]
    sincos_2d + frame_embed       fixed 2D positions + a learned embedding per plane         [ours]
    TimestepEmbedder              sinusoid of t → MLP                                 [ours, DDPM]
    LabelEmbedder                 class table with a null row for classifier-free guidance  [ours]
    STDiTBlock                    adaLN-Zero; spatial attn, "temporal" attn, MLP   [ours, Open-Sora]
                                  ("temporal" across the planes at each position, or
                                  over whole rows of all six: cfg.cross_plane)              [ours]
    FinalLayer                    adaLN, linear, then unpatchify                        [ours, DiT]
    one noise level per modality  t_v drives the video planes' adaLN, t_a the audio planes'
                                  [ours, after UniDiffuser and AVDiT]
  unprojected_stdit               the same STDiT over the full 2·T'-frame latent,
                                  the baseline of the efficiency claim (§6)                 [ours]

Token layout inside the network: `B×P×Q×D`, P latent frames (the 6 planes), Q = (L/p)² tokens per
plane, D = cfg.dit_width. Spatial attention folds P into the batch; temporal attention folds Q
(or, by rows, the row index) into the batch; there are no Python loops over planes, so the forward
compiles into one graph.

The regroups are einops patterns in these letters: B batch, c latent channels, P planes, L plane
side, p patch side, g = L/p patches per side, Q = (h w) a plane's g×g patch grid, row-major (h its
row, w its column), D width, H heads of d = D/H channels; ph, pw are a value's row and column
inside its p×p patch.
"""
import math

import torch
import torch.nn as nn
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from attention import sdpa

# ----------------------------------------------------------------------------------------------
# The unified 3D latent                                                                   [paper]
# ----------------------------------------------------------------------------------------------

PLANE_NAMES = ("v_hw", "v_th", "v_tw", "a_hw", "a_th", "a_tw")
# True for the three video planes, False for the three audio planes: `P` bool, in PLANE_NAMES order.
VIDEO_PLANES = torch.tensor([name.startswith("v_") for name in PLANE_NAMES])


def stack_planes(planes):
    """Six `B×c×L×L` planes, in PLANE_NAMES order, → the unified latent `B×c×P×L×L` (P = 6).

    Time is the ROW axis of every temporal plane (v_th, v_tw, a_th, a_tw), so row r of those four
    frames is the same instant of the clip, video and audio alike: the temporal attention of
    STDiT sees synchronous content at the same token position.
    """
    if len(planes) != len(PLANE_NAMES):
        raise ValueError(f"stack_planes: expected {len(PLANE_NAMES)} planes {PLANE_NAMES}, got {len(planes)}")
    shapes = [tuple(p.shape) for p in planes]
    if len(set(shapes)) != 1 or len(shapes[0]) != 4 or shapes[0][-1] != shapes[0][-2]:
        named = ", ".join(f"{n}={s}" for n, s in zip(PLANE_NAMES, shapes))
        raise ValueError(f"stack_planes: all planes must be one B×c×L×L shape, got {named}")
    return torch.stack(tuple(planes), dim=2)


def unstack_planes(z):
    """The exact inverse of stack_planes: `B×c×P×L×L` (P = 6) → tuple of six `B×c×L×L` planes."""
    if z.dim() != 5 or z.shape[2] != len(PLANE_NAMES):
        raise ValueError(f"unstack_planes: expected B×c×{len(PLANE_NAMES)}×L×L, got {tuple(z.shape)}")
    return tuple(z.unbind(dim=2))


def latent_shape(cfg, projected=True):
    """Per-sample latent shape (c, P, L, L) the denoiser works on.

    projected=True:  the six planes, P = 6                     → 6·(L/p)² tokens per clip.
    projected=False: the full latent grids of both modalities,
                     P = 2·T' frames of L×L (T' = L)            → 2·T'·(L/p)² tokens per clip.
    """
    frames = len(PLANE_NAMES) if projected else 2 * cfg.latent_frames
    return (cfg.latent_channels, frames, cfg.latent_size, cfg.latent_size)


# ----------------------------------------------------------------------------------------------
# Embeddings: patches, positions, timestep, class
# ----------------------------------------------------------------------------------------------

def sincos_2d(grid, dim):
    """Fixed 2D sine-cosine positions for a grid×grid patch grid: `grid²×dim`, float32.

    Half the channels encode the row, half the column; each half is sin/cos over dim/4
    geometric frequencies. Built with torch factories so it follows a `torch.device(...)` context
    (the meta-device test builds the paper-size model without allocating).
    """
    if dim % 4:
        raise ValueError(f"sincos_2d: width {dim} must be divisible by 4 (sin+cos for row and column)")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    coords = torch.arange(grid, dtype=torch.float32)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")        # grid×grid each

    def embed_1d(pos):                                                # grid² → grid²×dim/2
        angles = pos.reshape(-1, 1) * omega.reshape(1, -1)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([embed_1d(rows), embed_1d(cols)], dim=1)


class PatchEmbed(nn.Module):
    """`B×c×P×L×L` → `B×P×Q×D` tokens with a (1, p, p) Conv3d: each plane is patched on its own."""

    def __init__(self, in_channels, width, patch):
        super().__init__()
        self.proj = nn.Conv3d(in_channels, width, kernel_size=(1, patch, patch), stride=(1, patch, patch))

    def forward(self, x):
        return rearrange(self.proj(x), "B D P h w -> B P (h w) D")    # conv out: B×D×P×g×g


class TimestepEmbedder(nn.Module):
    """Timesteps `B` (DDPM's integers, or flow's 1000·t) → `B×D`: a sinusoid of t (as in
    DDPM/Transformer) then a 2-layer MLP."""

    def __init__(self, width, freq_dim=256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def sinusoid(self, t):
        """`B` → `B×freq_dim` float32; kept out of bf16, whose 8-bit mantissa would blur t≈999 vs 995."""
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        angles = t.float()[:, None] * freqs[None]
        return torch.cat([angles.cos(), angles.sin()], dim=-1)

    def forward(self, t):
        return self.mlp(self.sinusoid(t))


class LabelEmbedder(nn.Module):
    """Class labels `B` → `B×D`, with one extra row: the null label (= num_classes) that stands for
    "no condition". The training loss drops labels to null (diffusion.NoiseProcess.drop_labels), so
    the same network learns the unconditional ε that classifier-free guidance needs.        [ours]
    """

    def __init__(self, num_classes, width):
        super().__init__()
        self.null_label = num_classes                                 # the row after the real classes
        self.table = nn.Embedding(num_classes + 1, width)

    def forward(self, y):
        return self.table(y)


# ----------------------------------------------------------------------------------------------
# The STDiT block: adaLN-Zero, spatial attention, temporal attention, MLP            [ours, Open-Sora]
# ----------------------------------------------------------------------------------------------

def modulate(x, shift, scale):
    """adaLN: `x·(1 + scale) + shift`; `1 +` so that a zero modulation leaves x unchanged."""
    return x * (1 + scale) + shift


def plane_modulation(layer, cond, video_planes=None):
    """The adaLN parameters of every plane: `layer` applied to the conditioning, shaped to broadcast
    over `B×P×Q×D` tokens.

    cond `B×D` (one noise level for all planes)          → `B×1×1×(k·D)`
    cond a pair (cond_v, cond_a), each `B×D`, with
         video_planes a `P` bool                         → `B×P×1×(k·D)`: video planes take
                                                            layer(cond_v), audio planes layer(cond_a)
    Each group's modulation is the same Linear on the same `B×D` shape as the one-level case, so
    equal levels give bit-for-bit the one-level numbers; the pick per plane is a `where`, not a loop.
    """
    if isinstance(cond, tuple):
        video, audio = layer(cond[0]), layer(cond[1])                 # B×(k·D) each
        return torch.where(video_planes[None, :, None, None], video[:, None, None], audio[:, None, None])
    return layer(cond)[:, None, None, :]


class SelfAttention(nn.Module):
    """Multi-head self-attention over `S×n×D` sequences (S = the batch with planes or positions
    folded into it, n tokens per sequence)."""

    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x):
        q, k, v = rearrange(self.qkv(x), "S n (qkv H d) -> qkv S H n d", qkv=3, H=self.heads)
        x = sdpa(q, k, v)                                            # S×H×n×d
        return self.out(rearrange(x, "S H n d -> S n (H d)"))


class STDiTBlock(nn.Module):
    """One block on `B×P×Q×D` tokens (Q = grid·grid patches of a plane, row-major), conditioned on
    `cond`: `B×D`, or a pair (cond_v, cond_a) with `video_planes` (see `plane_modulation`).

    x += g1 · SpatialAttn(adaLN(x))    tokens of one plane attend to each other   (B·P sequences of Q)
    x += g2 · TemporalAttn(adaLN(x))   across the P planes, grouped by `cross_plane`:
                                         "position": the P tokens at one (row, column) (B·Q of P)
                                         "row":      the P·grid tokens of one row      (B·grid of P·grid)
    x += g3 · MLP(adaLN(x))
    The temporal step is where row r of v_th meets row r of a_th: the same instant, video and audio.
    """

    def __init__(self, width, heads, mlp_ratio, cross_plane="position", grid=1):
        super().__init__()
        self.cross_plane, self.grid = cross_plane, grid
        # LayerNorm without affine: adaLN supplies the per-sample scale and shift instead.
        self.norm_spatial = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.norm_temporal = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.norm_mlp = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.spatial = SelfAttention(width, heads)
        self.temporal = SelfAttention(width, heads)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        # shift, scale, gate for each of the three sub-layers; zero-initialised in STDiT.
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 9 * width))

    def forward(self, x, cond, video_planes=None):
        b, n_planes = x.shape[:2]
        mods = plane_modulation(self.modulation, cond, video_planes).chunk(9, dim=-1)  # nine B×(1 or P)×1×D
        shift_s, scale_s, gate_s, shift_t, scale_t, gate_t, shift_m, scale_m, gate_m = mods

        h = modulate(self.norm_spatial(x), shift_s, scale_s)
        h = self.spatial(rearrange(h, "B P Q D -> (B P) Q D"))       # one sequence per plane
        x = x + gate_s * rearrange(h, "(B P) Q D -> B P Q D", B=b)

        h = modulate(self.norm_temporal(x), shift_t, scale_t)
        if self.cross_plane == "row":              # one sequence per patch row h: row h of every plane
            h = self.temporal(rearrange(h, "B P (h w) D -> (B h) (P w) D", h=self.grid))
            x = x + gate_t * rearrange(h, "(B h) (P w) D -> B P (h w) D", B=b, P=n_planes)
        else:                                      # one sequence per position: its token in every plane
            h = self.temporal(rearrange(h, "B P Q D -> (B Q) P D"))
            x = x + gate_t * rearrange(h, "(B Q) P D -> B P Q D", B=b)

        return x + gate_m * self.mlp(modulate(self.norm_mlp(x), shift_m, scale_m))


class FinalLayer(nn.Module):
    """adaLN then a linear map of each `D` token to its `p·p·c` patch values (unpatchified by STDiT)."""

    def __init__(self, width, patch, out_channels):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, patch * patch * out_channels)

    def forward(self, x, cond, video_planes=None):
        shift, scale = plane_modulation(self.modulation, cond, video_planes).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))      # B×P×Q×(p·p·c)


# ----------------------------------------------------------------------------------------------
# STDiT                                                                          [paper; block ours]
# ----------------------------------------------------------------------------------------------

class STDiT(nn.Module):
    """The denoiser over a stacked latent: predicts ε or v (cfg.prediction; diffusion.py converts).

    STDiT(cfg, num_frames=6):
      forward(x: B×c×P×L×L float, t, y: B long or None, step: B float or None) → ε̂ or v̂: B×c×P×L×L
        t: `B`, one noise level for every plane, or `B×2`, column 0 = t_v for the video planes,
           column 1 = t_a for the audio planes (the six-plane model only); DDPM's integer
           indices in [0, cfg.diffusion_steps), or flow's 1000·t as floats (diffusion.py).
        step: with cfg.shortcut_steps > 0 only, the size of the step the velocity is for, in the
           same units (1000·δ; None = 0, the instantaneous velocity): diffusion.Flow.shortcut_loss.
    P = num_frames latent frames (6 planes, or 2·T' for the unprojected baseline), c =
    cfg.latent_channels, L = cfg.latent_size, patch p = cfg.patch.

    Conditioning emb(t) (+ emb(y) when cfg.num_classes > 0) drives every adaLN. With a `B×2` t the
    video planes are modulated by emb(t_v) + emb(y) and the audio planes by emb(t_a) + emb(y), so one
    network learns every pair of noise levels: a modality given clean (t = 0) beside a noisy one is
    how A2V and V2A are sampled [ours, after UniDiffuser]. t_v = t_a computes exactly what the `B`
    form computes. With num_classes > 0 and y=None the null label is used (the unconditional branch).
    A model with shortcut steps adds emb(step) to both groups' conditioning.

    `grad_checkpoint` (default False; train.py sets it on the instance) recomputes each block in the
    backward pass of a training step: the same numbers, less activation memory, ~1 more forward.
    """

    grad_checkpoint = False
    block_lists = ("blocks",)  # the transformer blocks (recipe.muon_params: Muon's matrices)

    def __init__(self, cfg, num_frames=len(PLANE_NAMES)):
        super().__init__()
        self.cfg = cfg
        self.num_frames = num_frames
        self.channels = cfg.latent_channels
        self.size = cfg.latent_size
        self.patch = cfg.patch
        self.grid = self.size // self.patch                           # patches per side of a plane
        width = cfg.dit_width

        self.patch_embed = PatchEmbed(self.channels, width, self.patch)
        # Fixed positions within a plane: non-persistent, rebuilt from cfg (nothing to load).
        self.register_buffer("pos_embed", sincos_2d(self.grid, width), persistent=False)  # Q×D
        # Which planes take t_v (the rest take t_a); built by a factory call from VIDEO_PLANES, so it
        # follows a device context (the meta-device test) and moves with the model.
        self.register_buffer("video_planes", torch.tensor(VIDEO_PLANES.tolist()), persistent=False)  # P bool
        # Learned per-plane embedding: tells v_hw from a_th etc., since attention is permutation-blind.
        self.frame_embed = nn.Parameter(torch.zeros(num_frames, width))                      # P×D
        self.t_embed = TimestepEmbedder(width)
        # Shortcut models (PAPER.md §5): the size of the step the output is for, embedded as t is; a
        # model trained without shortcut steps has no such input, so its checkpoints load unchanged.
        self.step_embed = TimestepEmbedder(width) if cfg.shortcut_steps > 0 else None
        self.y_embed = LabelEmbedder(cfg.num_classes, width) if cfg.num_classes > 0 else None
        self.blocks = nn.ModuleList(STDiTBlock(width, cfg.dit_heads, cfg.mlp_ratio, cfg.cross_plane, self.grid)
                                    for _ in range(cfg.dit_depth))
        self.final = FinalLayer(width, self.patch, self.channels)
        self.initialize_weights()

    @property
    def null_label(self):
        """The label meaning "no class" (= cfg.num_classes), or None for an unconditional model."""
        return self.y_embed.null_label if self.y_embed is not None else None

    def initialize_weights(self):
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        w = self.patch_embed.proj.weight                              # a linear map of each patch
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        nn.init.normal_(self.frame_embed, std=0.02)
        for layer in (self.t_embed.mlp[0], self.t_embed.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        if self.step_embed is not None:
            # zero output: until the shortcut phase trains it, every step size gets the flow velocity
            nn.init.normal_(self.step_embed.mlp[0].weight, std=0.02)
            nn.init.zeros_(self.step_embed.mlp[2].weight)
        if self.y_embed is not None:
            nn.init.normal_(self.y_embed.table.weight, std=0.02)
        # adaLN-Zero: zero shift/scale/gate makes every block the identity at step 0 (a residual
        # net starts as a plain patch embedding and grows depth as gates open). The zero output
        # layer makes a fresh model output exactly 0: ε̂ = 0, the mean of the noise, for
        # ε-prediction; v̂ = 0 for v-prediction, i.e. x̂0 = √ᾱ·x_t, the posterior mean of
        # unit-variance Gaussian data. Either is a harmless first guess for unit-variance latents.
        for block in self.blocks:
            nn.init.zeros_(block.modulation[-1].weight)
            nn.init.zeros_(block.modulation[-1].bias)
        for layer in (self.final.modulation[-1], self.final.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def unpatchify(self, x):
        """`B×P×Q×(p·p·c)` → `B×c×P×L×L`: the value for channel c at (ph, pw) inside patch (h, w) lands
        on plane row h·p + ph, column w·p + pw."""
        return rearrange(x, "B P (h w) (ph pw c) -> B c P (h ph) (w pw)", h=self.grid, ph=self.patch, pw=self.patch)

    def forward(self, x, t, y=None, step=None):
        expected = (self.channels, self.num_frames, self.size, self.size)
        if tuple(x.shape[1:]) != expected:                            # static shapes: a compile guard, not a break
            raise ValueError(f"STDiT: expected input B×{'×'.join(map(str, expected))} (c×P×L×L), got {tuple(x.shape)}")
        per_modality = t.dim() == 2                                   # B×2: (t_v, t_a) per clip
        if per_modality and (t.shape[1] != 2 or self.num_frames != len(PLANE_NAMES)):
            raise ValueError(f"STDiT: a per-modality t must be B×2 (t_v, t_a) on the {len(PLANE_NAMES)}-plane "
                             f"latent; got t {tuple(t.shape)} for {self.num_frames} planes (pass one t per clip)")
        tokens = self.patch_embed(x)                                  # B×P×Q×D
        tokens = tokens + self.pos_embed[None, None] + self.frame_embed[None, :, None]  # float32 residual stream

        label = None
        if self.y_embed is not None:
            if y is None:                                             # unconditional branch on request
                y = torch.full(t.shape[:1], self.null_label, dtype=torch.long, device=t.device)
            label = self.y_embed(y)                                   # B×D, shared by both modalities
        if per_modality:
            # each group's conditioning on a B×D input exactly as in the one-level case
            cond_v, cond_a = self.t_embed(t[:, 0]), self.t_embed(t[:, 1])
            cond = (cond_v, cond_a) if label is None else (cond_v + label, cond_a + label)
        else:
            cond = self.t_embed(t)                                    # B×D
            if label is not None:
                cond = cond + label
        if self.step_embed is not None:                               # the step size, for both modalities
            step = torch.zeros(t.shape[:1], device=t.device) if step is None else step   # none: the velocity
            size = self.step_embed(step)                              # B×D
            cond = (cond[0] + size, cond[1] + size) if per_modality else cond + size
        elif step is not None:
            raise ValueError("STDiT: a step size was given, but this model was trained without shortcut steps "
                             "(cfg.shortcut_steps = 0)")

        # grad_checkpoint (set by train.py, not part of the Config): keep only each block's input for
        # backward and recompute the block there, so activation memory holds one block's, not all;
        # non-reentrant checkpointing replays the RNG state and the autocast state of the forward
        recompute = self.grad_checkpoint and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute:
                tokens = checkpoint(block, tokens, cond, self.video_planes, use_reentrant=False)
            else:
                tokens = block(tokens, cond, self.video_planes)
        return self.unpatchify(self.final(tokens, cond, self.video_planes))


def unprojected_stdit(cfg):
    """The cost baseline of §6: the same STDiT (width, depth, heads) over the full latents of both
    modalities, input `B×c×(2·T')×L×L`, i.e. 2·T'·(L/p)² tokens per clip instead of 6·(L/p)²."""
    return STDiT(cfg, num_frames=latent_shape(cfg, projected=False)[1])

"""
The attention family of MDSA (PAPER.md §3), all on one fused primitive.

Every module here works on a feature grid laid out as tokens, `B×T'×Q×D`: B clips, T' latent frames,
Q = h·w tokens per frame, D channels (channels last, so every projection is a plain `nn.Linear`).
The two streams share T' (the same instants) but may have different Q (Qv video, Qa audio tokens).
Inside this file T' is written T. The einops patterns use these letters, plus H heads of d = D/H
channels, n a sequence's length and, in GCM-Attn, k groups of g frames (T = k·g).

  `attention`                 one multi-head SDPA call; every module below goes through it     [ours]
  `sdpa`, `fused_only`        its kernel choice by device and precision, and the switch that   [ours]
                              forces the fused kernel everywhere (memory counts)
  `SpatialSelfAttention`      self-attention among the Q tokens of each frame                  [ours]
  `MTSelfAttn`                multi-scale temporal self-attention, scales ×1 ×2 ×4            [paper]
                              (avg-pool in time, attend, repeat back, softmax-weighted fusion:  [ours])
  `GCMAttn`                   group cross-modal attention: video↔audio within groups of g      [paper: name]
                              consecutive frames, both directions                               [ours: details]
  `BiBlockCrossAttn`          Bi-Block CrossAttn, "localized fusion": per frame, ONE logit     [paper: name]
                              matrix softmaxed both ways, zero-initialised per-channel gates    [ours: details]

Conventions. Each module owns its pre-norm (LayerNorm) and returns a residual UPDATE, never `x +
update`; the caller adds it. MT-SelfAttn, GCM-Attn and Bi-Block start as the identity: their output
projections (or gates) are zero-initialised, so a freshly built block returns an update of exactly 0
and training grows the new paths from a working residual stream (the adaLN-Zero idea of DiT).
"""
import contextlib

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


# ------------------------------------------------------------------------------------------------
# The one primitive
# ------------------------------------------------------------------------------------------------
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head scaled dot-product attention over the last two axes.

    q: `...×nq×D`, k and v: `...×nk×D` with the same leading axes → `...×nq×D` (n: sequence lengths).
    The leading axes are folded into one batch axis so that the call is the 4D `B'×H×n×d` layout the
    fused kernels (flash / memory-efficient on GPU) expect; softmax(QKᵀ/√d)V is never written out.
    """
    dim = q.shape[-1]
    if dim % heads:
        raise ValueError(f"attention: width {dim} is not divisible by {heads} heads")

    def split(t):  # the leading axes into one batch axis, the width into heads
        return rearrange(t, "... n (H d) -> (...) H n d", H=heads)

    out = sdpa(split(q), split(k), split(v))                       # B'×H×nq×d
    return rearrange(out, "... H n d -> ... n (H d)").reshape(q.shape)  # heads merged, q's axes back


_fused_only = False  # set inside `fused_only()`: sdpa takes the fused kernel on every device


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(QKᵀ/√d)V on `B'×H×n×d` tensors: `F.scaled_dot_product_attention`, except bf16 on CPU.

    There the fused CPU kernel is slower than two batched matmuls on our short sequences (6 to 64
    tokens; the figures are in BENCHMARKS.md), so the product is written out. The logits are small
    (≤ 64×64 per head) and the softmax runs in fp32. Inside `fused_only()` the fused kernel runs
    there too.
    """
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and not _fused_only:
        weights = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
        return weights.softmax(-1).to(v.dtype) @ v
    return F.scaled_dot_product_attention(q, k, v)


@contextlib.contextmanager
def fused_only():
    """Inside: every `sdpa` call, of MDSA and STDiT alike, is `F.scaled_dot_product_attention`, the
    kernel a GPU runs, also for bf16 on a CPU. That kernel saves q, k, v, the output and the
    log-sum-exp for backward, never the n×n weights, so a CPU's memory count (memory.py) predicts a
    GPU's. Keep it open through backward, where checkpointed blocks run their forward again."""
    global _fused_only
    was, _fused_only = _fused_only, True
    try:
        yield
    finally:
        _fused_only = was


def _zero(linear: nn.Linear) -> nn.Linear:
    """Zero an output projection so the residual branch starts as the identity."""
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


# ------------------------------------------------------------------------------------------------
# Spatial self-attention [ours]
# ------------------------------------------------------------------------------------------------
class SpatialSelfAttention(nn.Module):
    """Self-attention among the tokens of one frame: `B×T×Q×D` → update `B×T×Q×D`.

    T is folded into the batch by `attention` (a reshape), so all frames go in one call.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.to_qkv(self.norm(x)).chunk(3, dim=-1)
        return self.out(attention(q, k, v, self.heads))


# ------------------------------------------------------------------------------------------------
# MT-SelfAttn: multi-scale temporal self-attention [paper]
# ------------------------------------------------------------------------------------------------
class MTSelfAttn(nn.Module):
    """Temporal self-attention at several time scales, fused: `B×T×Q×D` → update `B×T×Q×D`.

    [paper] scales ×1, ×2, ×4 of temporal self-attention, fused. [ours] how: for each scale s,
    average-pool time by s (T/s tokens, each summarising s frames), self-attend over those tokens at
    every spatial position (all B·Q positions in one call), repeat each output s times to get back
    to T, then sum the scales with softmax(learned logits) weights. Zero-initialised output.

    Q, K, V are projected once at full rate and pooled afterwards: a Linear commutes with averaging
    (bias included), so this equals pooling the tokens first, at a third of the projection cost.
    """

    def __init__(self, dim: int, heads: int, scales=(1, 2, 4)):
        super().__init__()
        self.heads, self.scales = heads, tuple(scales)
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * dim)
        self.scale_logits = nn.Parameter(torch.zeros(len(self.scales)))  # equal weights at start
        self.out = _zero(nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, Q, D = x.shape
        for s in self.scales:
            if T % s:
                raise ValueError(f"MTSelfAttn: scale {s} does not divide T={T} frames")
        qkv = rearrange(self.to_qkv(self.norm(x)), "B T Q D -> B Q T D")   # time is the sequence axis
        weights = self.scale_logits.softmax(0)
        fused = 0
        for w, s in zip(weights, self.scales):                   # 3 scales, not a loop over data
            pooled = qkv if s == 1 else qkv.unflatten(2, (T // s, s)).mean(3)   # B×Q×(T/s)×3D
            q, k, v = pooled.chunk(3, dim=-1)
            y = attention(q, k, v, self.heads)                   # B×Q×(T/s)×D
            fused = fused + w * (y if s == 1 else y.repeat_interleave(s, dim=2))  # nearest upsample
        return self.out(rearrange(fused, "B Q T D -> B T Q D"))


# ------------------------------------------------------------------------------------------------
# GCM-Attn: group cross-modal attention [paper: name]
# ------------------------------------------------------------------------------------------------
class GCMAttn(nn.Module):
    """Video↔audio cross-attention within groups of g consecutive frames.

    video `B×T×Qv×D`, audio `B×T×Qa×D` → (video update `B×T×Qv×D`, audio update `B×T×Qa×D`).
    Group k's g·Qv video tokens attend to group k's g·Qa audio tokens, and the reverse. Because the
    grid is time-major, `B×T×Q×D` → `B×(T/g)×(g·Q)×D` is a free view: the groups join the batch and
    each direction is one SDPA call. Fusion stays local in time, which is what synchrony needs.
    Zero-initialised output projections.
    """

    def __init__(self, dim: int, heads: int, group: int):
        super().__init__()
        self.heads, self.group = heads, group
        self.norm_v, self.norm_a = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv_v, self.qkv_a = nn.Linear(dim, 3 * dim), nn.Linear(dim, 3 * dim)
        self.out_v, self.out_a = _zero(nn.Linear(dim, dim)), _zero(nn.Linear(dim, dim))

    def forward(self, video: torch.Tensor, audio: torch.Tensor):
        T, g = video.shape[1], self.group
        if T % g or audio.shape[1] != T:
            raise ValueError(f"GCMAttn: group g={g} must divide T, got video T={T}, audio T={audio.shape[1]}")
        # one sequence per group: its g frames' tokens, in time order
        qv, kv, vv = rearrange(self.qkv_v(self.norm_v(video)), "B (k g) Q D -> B k (g Q) D", g=g).chunk(3, dim=-1)
        qa, ka, va = rearrange(self.qkv_a(self.norm_a(audio)), "B (k g) Q D -> B k (g Q) D", g=g).chunk(3, dim=-1)
        video_upd = rearrange(attention(qv, ka, va, self.heads), "B k (g Q) D -> B (k g) Q D", g=g)  # video ← audio
        audio_upd = rearrange(attention(qa, kv, vv, self.heads), "B k (g Q) D -> B (k g) Q D", g=g)  # audio ← video
        return self.out_v(video_upd), self.out_a(audio_upd)


# ------------------------------------------------------------------------------------------------
# Bi-Block CrossAttn: one shared logit matrix per frame [paper: name, "localized fusion"]
# ------------------------------------------------------------------------------------------------
class BiBlockCrossAttn(nn.Module):
    """Bidirectional cross-attention of one frame's video and audio tokens through ONE logit matrix.

    video `B×T×Qv×D`, audio `B×T×Qa×D` → (video update, audio update), same shapes.
    Per frame and head, S = Q_v K_aᵀ/√d (Qv×Qa) is the only affinity:
        video ← audio = softmax_rows(S)  V_a        (each video token distributes over audio tokens)
        audio ← video = softmax_rows(Sᵀ) V_v        (each audio token distributes over video tokens)
    Since Sᵀ = K_a Q_vᵀ/√d, the second direction is SDPA with the roles swapped: the audio keys act as
    queries and the video queries as keys. Two fused calls, one set of logits, no explicit softmax.
    [ours] both updates pass an output projection and a per-channel gate initialised to zero, so the
    block starts as the identity and learns how much of each direction to let in.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm_v, self.norm_a = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qv_v = nn.Linear(dim, 2 * dim)      # video: query + value
        self.kv_a = nn.Linear(dim, 2 * dim)      # audio: key + value
        self.out_v, self.out_a = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.gate_v = nn.Parameter(torch.zeros(dim))
        self.gate_a = nn.Parameter(torch.zeros(dim))

    def forward(self, video: torch.Tensor, audio: torch.Tensor):
        q_v, val_v = self.qv_v(self.norm_v(video)).chunk(2, dim=-1)   # B×T×Qv×D each
        k_a, val_a = self.kv_a(self.norm_a(audio)).chunk(2, dim=-1)   # B×T×Qa×D each
        video_upd = attention(q_v, k_a, val_a, self.heads)            # softmax over audio of S
        audio_upd = attention(k_a, q_v, val_v, self.heads)            # softmax over video of Sᵀ
        return self.gate_v * self.out_v(video_upd), self.gate_a * self.out_a(audio_upd)

"""
MDSA, the Multi-scale Dual-stream Spatio-Temporal Autoencoder (PAPER.md §3).

One clip in, six 2D latent planes out, and back:

    video B×3×T×S×S ─ Stream.embed ─┐                     ┌─ Stream.to_planes ─ v_hw, v_th, v_tw
                                    ├─ encoder blocks ────┤                      (each B×c×L×L)
    audio B×1×T×M×F ─ Stream.embed ─┘                     └─ Stream.to_planes ─ a_hw, a_th, a_tw

    six planes ─ Stream.from_planes (broadcast-sum) ─ decoder blocks ─ Stream.decode ─ video, audio

  [paper] two streams with the same structure and separate weights; multi-scale temporal
          self-attention, group cross-modal attention and Bi-Block cross-attention on the grid
          (attention.py); three 2D latents per stream aligned with the t, h, w axes.
  [ours]  the per-frame ResNet stem, the strided temporal step, factorised learned grid positions,
          attention-pooling `Agg` with a learned summary query, the diagonal-Gaussian bottleneck
          (KL weight 1e-6), the broadcast-sum decoder, the L1 + MSE + KL loss, cross-modal dropout.

Layout. Inside, the grid is kept as tokens `B×T'×Q×C` (Q = h·w, channels last): the same numbers as
the `B×C×T'×h×w` grid of the paper, in the order every attention module and Linear wants, so the
transformer part never permutes. In both streams T' = h = w = L (checked at construction).

Time is the ROW axis of both temporal planes (`z_th` is T'×h, `z_tw` is T'×w) in both streams:
once the planes are stacked (§4), row r of every temporal plane, video or audio, is one instant.
"""
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from attention import BiBlockCrossAttn, GCMAttn, MTSelfAttn, SpatialSelfAttention, attention


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of tensors in [-1, 1], over all elements; a 0-dim tensor."""
    return psnr_of_mse((x.detach().double() - y.detach().double()).pow(2).mean())


def psnr_of_mse(mse: torch.Tensor) -> torch.Tensor:
    """PSNR in dB from a mean squared error of values in [-1, 1] (peak-to-peak 2). The MSE is
    floored at 4e-10 so identical inputs give 100 dB rather than inf."""
    return 10 * torch.log10(4.0 / mse.clamp_min(4e-10))


# ------------------------------------------------------------------------------------------------
# Per-frame 2D convolutions: the stem and the head [ours]
# ------------------------------------------------------------------------------------------------
def group_norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, max(ch // 4, 1)), ch)   # ≥4 channels a group, ≤8 groups


class ResBlock2d(nn.Module):
    """GN-SiLU-conv3 twice plus a skip: `n×cin×H×W` → `n×cout×H×W` (n = frames folded into batch)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(group_norm(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
                                  group_norm(cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        return self.skip(x) + self.body(x)


class Upsample2d(nn.Module):
    """Nearest ×2 then conv3 (no checkerboard, unlike a transposed conv)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x):
        if torch.is_grad_enabled() and x.requires_grad:   # training: interpolate's backward is fast
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        # inference (decoding samples): nearest ×2 as a broadcast + reshape, the same values as
        # F.interpolate and faster on CPU (BENCHMARKS.md); its backward (a strided sum) is the slow
        # one, hence the branch
        n, c, h, w = x.shape
        return self.conv(x[:, :, :, None, :, None].expand(n, c, h, 2, w, 2).reshape(n, c, 2 * h, 2 * w))


def stage_widths(channels: int, down: int, what: str) -> list:
    """Channel width at each resolution level 0..k of a stem that downsamples by `down` = 2^k.
    Widths halve per level going up in resolution (floored at C/8 and 8): most of the pixels see
    few channels, which is where a per-frame stem spends its time."""
    k = down.bit_length() - 1
    if down < 1 or 2 ** k != down:
        raise ValueError(f"MDSA: {what} downsampling factor {down} must be a power of 2 "
                         "(the stem downsamples by stride-2 stages)")
    floor = max(channels // 8, 8)
    return [min(channels, max(channels >> (k - i), floor)) for i in range(k + 1)]


class Stream(nn.Module):
    """Everything one modality owns (video and audio each get one; same structure, own weights).

    embed:      `B×cin×T×H×W` → grid tokens `B×T'×Q×C`: per-frame 2D ResNet stem (frames folded
                into the batch), stride-2 stages down by `down`, then time down by `time_down` with
                a strided temporal "patch" (concatenate d_t frames' channels, Linear), plus positions.
    to_planes:  grid → three (mean, logvar) pairs `B×c×L×L`: hw, th, tw (orthogonal decomposition).
    from_planes: three planes `B×c×L×L` → grid tokens (1×1 conv, broadcast, sum) plus positions.
    decode:     grid tokens → `B×cout×T×H×W`: time up (Linear to d_t·C), then the mirror of the stem.
    """

    def __init__(self, cin: int, cfg, down: int, what: str):
        super().__init__()
        C, c, dt, L = cfg.ae_channels, cfg.latent_channels, cfg.time_down, cfg.latent_size
        self.cin, self.time_down, self.L = cin, dt, L
        w = stage_widths(C, down, what)
        # ---- stem: conv_in, [ResBlock, stride-2 conv] per level, ResBlock at the bottom ----
        # the full frame (level 0) has the most pixels at the fewest channels: its ResBlock, in the
        # stem and in the head, is there only with cfg.ae_full_res_block
        def block_at(i):
            return [ResBlock2d(w[i], w[i])] if i > 0 or cfg.ae_full_res_block else []

        stem = [nn.Conv2d(cin, w[0], 3, padding=1)]
        for i in range(len(w) - 1):
            stem += block_at(i) + [nn.Conv2d(w[i], w[i + 1], 3, stride=2, padding=1)]
        self.stem = nn.Sequential(*stem, ResBlock2d(C, C))
        # a strided temporal conv with kernel = stride = d_t, written as a Linear over d_t·C channels:
        # keeps the order of frames inside a step (an audio onset's sub-step timing), unlike avg-pool
        self.time_in = nn.Linear(dt * C, C) if dt > 1 else nn.Identity()
        self.pos_in = GridPositions(cfg.latent_frames, L, L, C)
        # ---- orthogonal decomposition and the Gaussian bottleneck ----
        self.agg = AxisPool(C, cfg.ae_heads, (cfg.latent_frames, L, L))
        self.to_moments = nn.ModuleList(nn.Sequential(nn.LayerNorm(C), nn.Linear(C, 2 * c))
                                        for _ in range(3))                  # a 1×1 conv per plane
        # ---- decoder side ----
        self.from_latent = nn.ModuleList(nn.Linear(c, C) for _ in range(3))  # 1×1 conv c → C
        self.pos_out = GridPositions(cfg.latent_frames, L, L, C)
        self.time_out = nn.Linear(C, dt * C) if dt > 1 else nn.Identity()
        head = [ResBlock2d(C, C)]
        for i in reversed(range(len(w) - 1)):
            head += [Upsample2d(w[i + 1], w[i])] + block_at(i)
        # no GroupNorm before the output conv (unlike LDM's decoder): over a frame that is mostly flat
        # background, GN divides a small object's features by a std that the object itself sets, so
        # its output colour can no longer scale with them
        self.head = nn.Sequential(*head, nn.SiLU(), nn.Conv2d(w[0], cin, 3, padding=1))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        B, _, T, H, W = x.shape
        f = self.stem(x.transpose(1, 2).reshape(B * T, self.cin, H, W))   # (B·T)×C×L×L
        assert f.shape[-2:] == (self.L, self.L), f"stem reached {tuple(f.shape[-2:])}, expected L={self.L}"
        grid = rearrange(f, "(b t k) c h w -> b t (h w) (k c)", b=B, k=self.time_down)
        return self.time_in(grid) + self.pos_in()                          # B×T'×Q×C

    def to_planes(self, grid: torch.Tensor) -> list:
        return [head(p).permute(0, 3, 1, 2).chunk(2, dim=1)               # (mean, logvar) B×c×L×L
                for head, p in zip(self.to_moments, self.agg(grid))]

    def from_planes(self, planes) -> torch.Tensor:
        hw, th, tw = (proj(p.permute(0, 2, 3, 1)) for proj, p in zip(self.from_latent, planes))
        # each plane is constant along the axis it lost: hw over t, th over w, tw over h
        grid = hw[:, None] + th[:, :, :, None] + tw[:, :, None]           # B×T'×h×w×C
        return grid.flatten(2, 3) + self.pos_out()

    def decode(self, grid: torch.Tensor) -> torch.Tensor:
        B = grid.shape[0]
        f = rearrange(self.time_out(grid), "b t (h w) (k c) -> (b t k) c h w", h=self.L, k=self.time_down)
        out = self.head(f)                                                  # (B·T)×cout×H×W
        return out.unflatten(0, (B, -1)).transpose(1, 2)                    # B×cout×T×H×W (a view)


class GridPositions(nn.Module):
    """Learned factorised positions p_t[t] + p_h[y] + p_w[x] → `T×(h·w)×C` [ours].
    Learned rather than sin-cos because the grid is small and fixed by the config (3·L·C numbers),
    and audio's axes (mel band, time within a frame) are not image axes: each stream learns its own."""

    def __init__(self, t: int, h: int, w: int, dim: int):
        super().__init__()
        self.pos_t, self.pos_h, self.pos_w = (nn.Parameter(torch.randn(n, dim) * 0.02) for n in (t, h, w))

    def forward(self):
        return (self.pos_t[:, None, None] + self.pos_h[None, :, None] + self.pos_w[None, None, :]).flatten(1, 2)


class AxisPool(nn.Module):
    """Agg of PAPER §3: attention pooling of the grid along t, w and h → the planes hw, th, tw.

    grid `B×T×Q×C` (Q = h·w; T here is T') → [z_hw `B×h×w×C`, z_th `B×T×h×C`, z_tw `B×T×w×C`] (channels last).
    [ours, PVDM-style] one learned query per plane (a summary token) attends over the tokens along
    its axis; learned axis positions are added to those keys and values so the summary knows where
    along the axis each contribution came from. K, V are projected once for all three planes, and
    each plane is one batched SDPA call over every line of the grid.
    """

    def __init__(self, dim: int, heads: int, size: tuple):
        super().__init__()
        T, h, w = size
        self.heads, self.h, self.w = heads, h, w
        self.norm = nn.LayerNorm(dim)
        self.to_kv = nn.Linear(dim, 2 * dim)
        self.queries = nn.Parameter(torch.randn(3, dim) * 0.02)
        self.pos_t, self.pos_w, self.pos_h = (nn.Parameter(torch.randn(n, 2 * dim) * 0.02) for n in (T, w, h))

    def forward(self, grid: torch.Tensor) -> list:
        B, T, Q, C = grid.shape
        kv = self.to_kv(self.norm(grid)).unflatten(2, (self.h, self.w))     # B×T×h×w×2C
        planes = []
        # (axis pooled away, its positions): t → hw, w → th, h → tw; the remaining axes keep order,
        # so time stays the ROW axis of both temporal planes
        for i, (axis, pos) in enumerate(((1, self.pos_t), (3, self.pos_w), (2, self.pos_h))):
            k, v = (kv.movedim(axis, -2) + pos).chunk(2, dim=-1)           # B×o1×o2×n×C
            q = self.queries[i].expand(*k.shape[:-2], 1, C)
            planes.append(attention(q, k, v, self.heads).squeeze(-2))      # B×o1×o2×C
        return planes


# ------------------------------------------------------------------------------------------------
# One spatio-temporal block on the two grids [paper: the attention family; order ours]
# ------------------------------------------------------------------------------------------------
class MDSABlock(nn.Module):
    """Spatial self-attn, MT-SelfAttn (per stream), GCM-Attn, Bi-Block CrossAttn, MLP (per stream).

    video `B×T'×Qv×C`, audio `B×T'×Qa×C` (either may be None) → the same, updated residually.
    With one stream missing the cross-modal layers are skipped. `cross` (a 0-dim 0/1 tensor, or None
    for 1) scales their updates: the encoder's cross-modal dropout passes 0 (see MDSA._posteriors).
    """

    def __init__(self, dim: int, heads: int, scales, group: int):
        super().__init__()
        self.spatial_v, self.spatial_a = SpatialSelfAttention(dim, heads), SpatialSelfAttention(dim, heads)
        self.temporal_v, self.temporal_a = MTSelfAttn(dim, heads, scales), MTSelfAttn(dim, heads, scales)
        self.gcm = GCMAttn(dim, heads, group)
        self.biblock = BiBlockCrossAttn(dim, heads)
        self.mlp_v, self.mlp_a = (nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(),
                                                nn.Linear(4 * dim, dim)) for _ in range(2))

    def forward(self, video, audio, cross=None):
        if video is not None:
            video = video + self.spatial_v(video)
            video = video + self.temporal_v(video)
        if audio is not None:
            audio = audio + self.spatial_a(audio)
            audio = audio + self.temporal_a(audio)
        if video is not None and audio is not None:
            for layer in (self.gcm, self.biblock):
                dv, da = layer(video, audio)
                video, audio = (video + dv, audio + da) if cross is None else (video + cross * dv, audio + cross * da)
        if video is not None:
            video = video + self.mlp_v(video)
        if audio is not None:
            audio = audio + self.mlp_a(audio)
        return video, audio


# ------------------------------------------------------------------------------------------------
# MDSA
# ------------------------------------------------------------------------------------------------
class MDSA(nn.Module):
    """The dual-stream autoencoder. `MDSA(cfg)`; see the module docstring for the data flow.

    encode(video=None, audio=None, sample=False) → (v_hw, v_th, v_tw, a_hw, a_th, a_tw), each B×c×L×L
    decode(planes) → (video B×3×T×S×S, audio B×1×T×M×F), unbounded (clamp to [-1, 1] for display)
    loss(video, audio) → {'loss', 'kl_share', 'l1_video', 'l1_audio', 'mse_video', 'mse_audio', 'kl', 'video_rec', 'audio_rec'}
    `grad_checkpoint` (default False; train.py sets it on the instance) recomputes each encoder and
    decoder block in the backward pass of a training step: the same numbers, less activation memory.
    """

    grad_checkpoint = False
    block_lists = ("enc_blocks", "dec_blocks")  # the transformer blocks (recipe.muon_params: Muon's matrices)

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        T, S, M, Fw, L = cfg.frames, cfg.image_size, cfg.n_mels, cfg.mel_width, cfg.latent_size
        lv, lah, law = S // cfg.video_down, M // cfg.audio_down, Fw // cfg.audio_down
        if not (cfg.latent_frames == lv == lah == law == L):
            raise ValueError(f"MDSA: the streams must meet on one L, but T'={T}/{cfg.time_down}="
                             f"{cfg.latent_frames}, video {S}/{cfg.video_down}={lv}, audio "
                             f"{M}×{Fw}/{cfg.audio_down}={lah}×{law}")
        self.video = Stream(3, cfg, cfg.video_down, "video")
        self.audio = Stream(1, cfg, cfg.audio_down, "audio")
        block = lambda: MDSABlock(cfg.ae_channels, cfg.ae_heads, cfg.mt_scales, cfg.gcm_group)
        self.enc_blocks = nn.ModuleList(block() for _ in range(cfg.ae_enc_blocks))
        self.dec_blocks = nn.ModuleList(block() for _ in range(cfg.ae_dec_blocks))

    def _blocks(self, blocks, v, a, cross):
        """Run `blocks` (MDSABlock) on video `B×T'×Qv×C` and audio `B×T'×Qa×C` (either may be None).

        With grad_checkpoint on in a training step, each block keeps only its inputs for backward
        and is recomputed there (non-reentrant: the RNG and autocast state of the forward replay),
        so activation memory holds one block's rather than all of them."""
        recompute = self.grad_checkpoint and self.training and torch.is_grad_enabled()
        for blk in blocks:
            if recompute:
                v, a = checkpoint(blk, v, a, cross, use_reentrant=False)
            else:
                v, a = blk(v, a, cross)
        return v, a

    def _check(self, x, shape, what):
        if x.dim() != 5 or tuple(x.shape[1:]) != shape:
            raise ValueError(f"MDSA: {what} must be B×{'×'.join(map(str, shape))} for this config, "
                             f"got {tuple(x.shape)}")

    def _posteriors(self, video, audio):
        """→ (video [(mean, logvar)]*3 or None, audio [(mean, logvar)]*3 or None), each B×c×L×L."""
        cfg = self.cfg
        if video is None and audio is None:
            raise ValueError("MDSA.encode: give video, audio or both")
        if video is not None:
            self._check(video, (3, cfg.frames, cfg.image_size, cfg.image_size), "video")
        if audio is not None:
            self._check(audio, (1, cfg.frames, cfg.n_mels, cfg.mel_width), "audio")
        # Cross-modal dropout [ours]: for a whole batch the encoder runs as if the other modality
        # were absent, so encoding one modality alone (zero-shot A2V/V2A) is in-distribution. The
        # updates are multiplied by 0 rather than skipped so every parameter still joins the graph
        # (DDP needs no find_unused_parameters, and ranks may draw differently).
        # The keep/drop factor stays a tensor (no .item()), so torch.compile sees no graph break.
        keep = ((torch.rand(()) >= cfg.xmodal_dropout).float()
                if self.training and cfg.xmodal_dropout > 0 else None)
        v = self.video.embed(video) if video is not None else None
        a = self.audio.embed(audio) if audio is not None else None
        v, a = self._blocks(self.enc_blocks, v, a, keep)
        return (self.video.to_planes(v) if v is not None else None,
                self.audio.to_planes(a) if a is not None else None)

    @staticmethod
    def _sample(mean, logvar):
        return mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)

    def encode(self, video=None, audio=None, sample: bool = False) -> tuple:
        """video `B×3×T×S×S`, audio `B×1×T×M×F` in [-1, 1], either may be None →
        (v_hw, v_th, v_tw, a_hw, a_th, a_tw), each `B×c×L×L` (posterior means, or samples);
        a missing modality's three planes are None."""
        out = []
        for post in self._posteriors(video, audio):
            if post is None:
                out += [None] * 3
            else:
                out += [self._sample(m, lv.clamp(-30.0, 20.0)) if sample else m for m, lv in post]
        return tuple(out)

    def decode(self, planes) -> tuple:
        """planes: the 6-tuple (v_hw, v_th, v_tw, a_hw, a_th, a_tw), each `B×c×L×L` →
        (video `B×3×T×S×S`, audio `B×1×T×M×F`). Unbounded: the L1 loss pulls it into [-1, 1]; a tanh
        could reach the mel floor (silence is exactly -1 after clamping) only asymptotically, with a
        vanishing gradient, so callers clamp for display or mel inversion instead."""
        if len(planes) != 6 or any(p is None for p in planes):
            raise ValueError("MDSA.decode needs all six planes (v_hw, v_th, v_tw, a_hw, a_th, a_tw)")
        v, a = self.video.from_planes(planes[:3]), self.audio.from_planes(planes[3:])
        v, a = self._blocks(self.dec_blocks, v, a, None)
        return self.video.decode(v), self.audio.decode(a)

    def loss(self, video: torch.Tensor, audio: torch.Tensor) -> dict:
        """Per modality L1 + mse_weight·MSE (means over elements), plus kl_weight·KL [ours].

        L1 alone is minimised by the per-pixel median, and for a small moving object (a disc, a
        click) whose place the decoder cannot yet pin down, the median is the background: the object
        never appears. The squared term gives those rare, large errors the gradient that finds them,
        and it must outweigh the L1 (cfg.mse_weight): once the background is right, the L1's
        gradient there is the SIGN of a ~0 error, noise from nearly every pixel, which at equal
        weights drowns a small object's colour.
        KL of the six diagonal Gaussians against N(0, I), summed over latent elements and averaged
        over the batch. The reconstruction terms are per-element MEANS, whereas latent diffusion sums
        them over pixels, so here kl_weight weighs the KL about E = 3·T·S² + T·M·F times more than
        the same number does there (65,536 elements per clip at `tiny`, 3,211,264 at `paper`;
        PAPER.md §3).
        "kl_share" is the KL term's fraction of the loss, for the training log."""
        post_v, post_a = self._posteriors(video, audio)
        posts = [(m, lv.clamp(-30.0, 20.0)) for m, lv in post_v + post_a]
        video_rec, audio_rec = self.decode([self._sample(m, lv) for m, lv in posts])
        err_v, err_a = video_rec - video, audio_rec - audio
        l1_video, l1_audio = err_v.abs().mean(), err_a.abs().mean()
        mse_video, mse_audio = err_v.pow(2).mean(), err_a.pow(2).mean()
        kl = sum(0.5 * (m.pow(2) + lv.exp() - 1.0 - lv).sum() for m, lv in posts) / video.shape[0]
        recon = l1_video + l1_audio + self.cfg.mse_weight * (mse_video + mse_audio)
        loss = recon + self.cfg.kl_weight * kl
        return {"loss": loss, "kl_share": (self.cfg.kl_weight * kl / loss).detach(),
                "l1_video": l1_video.detach(), "l1_audio": l1_audio.detach(), "kl": kl.detach(),
                "mse_video": mse_video.detach(), "mse_audio": mse_audio.detach(),
                "video_rec": video_rec.detach(), "audio_rec": audio_rec.detach()}

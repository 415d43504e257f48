"""
The audio → "video-like" projection and its inverse: PAPER.md §2.

A 1.6 s waveform (N = 25,600 samples at `tiny`) becomes mel "frames" `B×1×T×M×F`: one M×F log-mel
image per video frame, so audio is a T×H×W volume like the video and both streams of MDSA (§3) see
the same time axis. The inverse turns generated mel frames back into sound with no neural vocoder.

  [paper] audio is preprocessed into a video-like tensor aligned with the frames in time and space;
          it is inverted by an inverse mel transform, with no neural vocoder.
  [ours]  ONE log-mel over the whole clip (no edge effects at frame boundaries), hop = N / (T·F) so it
          has exactly T·F columns, cut into T chunks of F columns; Slaney mel scale with
          area-normalised filters (librosa's default); natural-log mel clamped to the FIXED range
          [LOG_MEL_MIN, LOG_MEL_MAX] and mapped to [-1, 1], so inversion needs no dataset statistics;
          inverse by non-negative least squares (mel → linear magnitude) and fast Griffin-Lim
          (momentum 0.99, 32 iterations).

  wave_to_frames / frames_to_wave    the projection and its inverse (the two calls the rest uses)
  mel_filterbank                     the M×K Slaney filters, built once per size
  mel_to_linear, griffin_lim         the two steps of the inverse
  spectral_convergence, log_spectral_distance   how close a rebuilt waveform is, in known units
"""
import functools
import math

import torch
import torch.nn.functional as F

# Natural-log mel magnitude is clamped to these FIXED bounds, so the inverse needs no dataset
# statistics. exp(-11.5) ≈ 1e-5 is the floor HiFi-GAN-style vocoders use; 2.5 leaves headroom over
# a full-scale sine's loudest band at n_fft = 512 (+0.8 at M = 32, +1.3 at M = 64 for 100 Hz).
LOG_MEL_MIN = -11.5
LOG_MEL_MAX = 2.5


def _hz_to_mel(hz):
    """Slaney mel scale: linear below 1 kHz (3 mel per 200 Hz), logarithmic above."""
    hz = torch.as_tensor(hz, dtype=torch.float64)
    lin = hz * 3.0 / 200.0
    log = 15.0 + torch.log(hz.clamp(min=1e-9) / 1000.0) / (math.log(6.4) / 27.0)
    return torch.where(hz < 1000.0, lin, log)


def _mel_to_hz(mel):
    lin = mel * 200.0 / 3.0
    log = 1000.0 * torch.exp((mel - 15.0) * (math.log(6.4) / 27.0))
    return torch.where(mel < 15.0, lin, log)


@functools.lru_cache(maxsize=16)
def mel_filterbank(sample_rate, n_fft, n_mels, device=None) -> torch.Tensor:
    """The M×K Slaney mel filters, built once per (sizes, device): every clip of a dataset and every
    inversion shares the one cached tensor, so callers must not write into it."""
    fft_hz = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges_hz = _mel_to_hz(torch.linspace(0, float(_hz_to_mel(sample_rate / 2)), n_mels + 2,
                                         dtype=torch.float64))
    lo, mid, hi = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (fft_hz - lo) / (mid - lo)
    falling = (hi - fft_hz) / (hi - mid)
    tri = torch.clamp(torch.minimum(rising, falling), min=0.0)
    return (tri * (2.0 / (hi - lo))).float().to(device)


@functools.lru_cache(maxsize=16)
def _hann(n_fft, device=None) -> torch.Tensor:
    """The STFT window, built once per (size, device) rather than on every stft/istft call."""
    return torch.hann_window(n_fft, device=device)


def _stft_mag(wave, cfg):
    """B×N → B×K×(T·F+1) magnitude, centred frames (column i is centred on sample i·hop)."""
    spec = torch.stft(wave, cfg.n_fft, hop_length=cfg.hop, window=_hann(cfg.n_fft, wave.device),
                      center=True, pad_mode="reflect", return_complex=True)
    return spec.abs()


def wave_to_frames(wave: torch.Tensor, cfg) -> torch.Tensor:
    """Waveform B×N (or N) → mel frames B×1×T×M×F (or 1×T×M×F) in [-1, 1].

    Audio frame t is the M×F log-mel image of the clip's t-th 1/fps seconds (columns t·F … t·F+F-1,
    centred on samples t·F·hop … (t·F+F-1)·hop).
    """
    wave = torch.as_tensor(wave, dtype=torch.float32)
    single = wave.dim() == 1
    wave = wave[None] if single else wave
    if wave.shape[-1] != cfg.clip_samples:
        raise ValueError(f"wave_to_frames: expected {cfg.clip_samples} samples, got {wave.shape[-1]}")
    # center=True pads n_fft/2 on both sides and yields 1 + N/hop = T·F + 1 columns (hop divides N
    # exactly, see Config.hop); the last column is centred on sample N, past the clip, so drop it.
    mag = _stft_mag(wave, cfg)[..., : cfg.frames * cfg.mel_width]               # B×K×(T·F)
    mel = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, wave.device) @ mag  # B×M×(T·F)
    log_mel = torch.log(mel.clamp(min=math.exp(LOG_MEL_MIN))).clamp(max=LOG_MEL_MAX)
    unit = 2.0 * (log_mel - LOG_MEL_MIN) / (LOG_MEL_MAX - LOG_MEL_MIN) - 1.0
    B, M = unit.shape[:2]
    frames = unit.reshape(B, M, cfg.frames, cfg.mel_width).permute(0, 2, 1, 3)  # B×T×M×F
    frames = frames[:, None]                                                    # B×1×T×M×F
    return frames[0] if single else frames


def frames_to_mel(frames: torch.Tensor, cfg) -> torch.Tensor:
    """Mel frames B×1×T×M×F in [-1, 1] → linear mel magnitude B×M×(T·F): join chunks, undo mapping."""
    B = frames.shape[0]
    unit = frames.float().clamp(-1, 1).reshape(B, cfg.frames, cfg.n_mels, cfg.mel_width)
    unit = unit.permute(0, 2, 1, 3).reshape(B, cfg.n_mels, cfg.frames * cfg.mel_width)
    return torch.exp((unit + 1.0) / 2.0 * (LOG_MEL_MAX - LOG_MEL_MIN) + LOG_MEL_MIN)


def mel_to_linear(mel: torch.Tensor, cfg, n_iter: int = 100) -> torch.Tensor:
    """Linear mel B×M×C → STFT magnitude B×K×C by non-negative least squares, min ‖A x − mel‖².

    Why NNLS rather than the clamped pseudo-inverse: with M ≪ K the minimum-norm pseudo-inverse
    spreads negative lobes between band centres, and clamping them to zero breaks A x = mel; NNLS
    keeps A x close to mel with x ≥ 0, which lowers the round trip's spectral convergence (RESULTS.md,
    "Why NNLS before Griffin-Lim?"). Multiplicative updates (Lee & Seung) keep x ≥ 0 by construction;
    they start from Aᵀmel scaled to the right energy.
    """
    B, M, C = mel.shape
    A = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, mel.device)     # M×K
    At = A.T.contiguous()                                                       # K×M
    # Every column is its own problem: lay the B·C of them side by side as one M×(B·C) matrix and
    # solve it in blocks of NNLS_COLUMNS. A block's buffers (~2 MB each) stay in cache through all
    # n_iter updates, where the whole batch (16 MB per buffer at B = 32) streams from memory at
    # every one; the result is the same, column by column.
    columns = mel.transpose(0, 1).reshape(M, B * C)
    x = torch.cat([_nnls(A, At, block, n_iter) for block in columns.split(NNLS_COLUMNS, dim=1)], dim=1)
    return x.reshape(-1, B, C).transpose(0, 1)                                  # B×K×C (a view)


NNLS_COLUMNS = 2048   # columns per block of mel_to_linear: its 3 K×2048 float32 buffers (6 MB) fit in L3


def _nnls(A, At, mel, n_iter):
    """Lee-Seung multiplicative NNLS for the columns of mel (M×n) → x (K×n), updated in place."""
    At_mel = At @ mel                                                           # K×n
    x = At_mel.clamp(min=1e-12)
    x.mul_(mel.sum(0) / (A @ x).sum(0).clamp(min=1e-12))
    Ax, denom = mel.new_empty(mel.shape), At_mel.new_empty(At_mel.shape)
    for _ in range(n_iter):
        # Aᵀ(A x) costs 2·M·K per column against K² for a precomputed AᵀA; the floor keeps x out
        # of float32 denormals, which CPUs compute slowly
        torch.mm(At, torch.mm(A, x, out=Ax), out=denom).clamp_(min=1e-12)
        x.mul_(At_mel).div_(denom).clamp_(min=1e-12)                            # x·Aᵀmel / AᵀAx
    return x


def griffin_lim(mag: torch.Tensor, cfg, n_iter: int = 32, momentum: float = 0.99,
                length: int = None) -> torch.Tensor:
    """Fast Griffin-Lim (Perraudin et al. 2013): magnitude B×K×C → waveform B×length.

    Deterministic: the initial phase comes from a generator seeded with 0, not the global RNG.
    The loop works frame-major (B×C×K), the layout rfft and irfft read and write, with its own
    stft / istft (the same as torch's with center=True, a Hann window and reflect padding): torch's
    pair is bin-major and transposes the whole spectrum twice per iteration.
    """
    n_fft, hop = cfg.n_fft, cfg.hop
    B, K, C = mag.shape
    length = hop * (C - 1) if length is None else length
    window, half = _hann(n_fft, mag.device), n_fft // 2
    span = n_fft + hop * (C - 1)                        # samples the C overlapped frames cover

    def overlap_add(frames):                            # B×C×n_fft → B×span
        return F.fold(frames.transpose(1, 2), (1, span), (1, n_fft), stride=(1, hop)).reshape(-1, span)

    # istft divides by the overlapped window², the same for every clip: computed once, cropped like
    # the signal (center=True drops n_fft/2 samples at the start)
    envelope = overlap_add(window.pow(2).expand(1, C, n_fft))[:, half: half + length]
    if envelope.min() < 1e-11:
        raise ValueError(f"griffin_lim: hop {hop} leaves gaps between {n_fft}-sample windows")

    def istft(spec):                                    # B×C×K → B×length
        wave = overlap_add(torch.fft.irfft(spec, n=n_fft).mul_(window))[:, half: half + length]
        return F.pad(wave, (0, length - wave.shape[1])) / envelope

    def stft(wave):                                     # B×length → B×C×K
        padded = F.pad(wave[:, None], (half, half), mode="reflect")[:, 0]
        return torch.fft.rfft(padded.unfold(-1, n_fft, hop)[:, :C] * window)

    gen = torch.Generator().manual_seed(0)
    # one K×C phase shared by the batch, so a clip inverts the same alone or in any batch
    phase = torch.rand(mag.shape[-2:], generator=gen).to(mag.device) * 2 * math.pi
    mag = mag.transpose(1, 2).contiguous()                                      # B×C×K
    angles = torch.polar(torch.ones_like(mag), phase.T.expand_as(mag))
    previous = torch.zeros_like(angles)
    for _ in range(n_iter):
        rebuilt = stft(istft(mag * angles))
        # the "fast" step: extrapolate past the projection by momentum/(1+momentum) of the last one;
        # written into the buffer of `previous`, which is not needed after this line
        angles = torch.sub(rebuilt, previous, alpha=momentum / (1 + momentum), out=previous)
        parts = torch.view_as_real(angles)                                      # B×C×K×2, a view
        # |z| as hypot of the real view: what complex abs computes, at a third of its cost on CPU
        parts.div_(torch.hypot(parts[..., 0], parts[..., 1]).clamp_(min=1e-16)[..., None])
        previous = rebuilt
    return istft(mag * angles)


def frames_to_wave(frames: torch.Tensor, cfg, n_iter: int = 32) -> torch.Tensor:
    """Mel frames B×1×T×M×F (or 1×T×M×F) in [-1, 1] → waveform B×N (or N), N = cfg.clip_samples."""
    frames = torch.as_tensor(frames).float()
    single = frames.dim() == 4
    frames = frames[None] if single else frames
    # fp32 even inside a caller's bf16 autocast: NNLS and Griffin-Lim iterate on small differences
    with torch.autocast(frames.device.type, enabled=False):
        mag = mel_to_linear(frames_to_mel(frames, cfg), cfg)                    # B×K×(T·F)
        # istft with center=True wants the T·F + 1 columns that wave_to_frames computed; the dropped
        # last one (centred on sample N) is close to its neighbour, so repeat it.
        mag = torch.cat([mag, mag[..., -1:]], dim=-1)
        wave = griffin_lim(mag, cfg, n_iter=n_iter, length=cfg.clip_samples)
    return wave[0] if single else wave


def _analysis_mag(wave, n_fft, hop):
    """STFT magnitude scaled by 2/Σwindow, so a full-scale sine reads 1.0 in its bin."""
    wave = torch.as_tensor(wave, dtype=torch.float32)
    window = torch.hann_window(n_fft, device=wave.device)
    spec = torch.stft(wave, n_fft, hop_length=hop, window=window, center=True, return_complex=True)
    return spec.abs() * (2.0 / window.sum())


def spectral_convergence(reference, estimate, n_fft: int = 512, hop: int = 128) -> float:
    """‖|S_ref| − |S_est|‖_F / ‖|S_ref|‖_F of two waveforms' STFT magnitudes (unitless, 0 = equal;
    Griffin-Lim is judged on magnitudes because its phase is free)."""
    a, b = _analysis_mag(reference, n_fft, hop), _analysis_mag(estimate, n_fft, hop)
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(a).clamp(min=1e-12))


def log_spectral_distance(reference, estimate, n_fft: int = 512, hop: int = 128,
                          floor_db: float = -80.0) -> float:
    """Log-spectral distance in dB: RMS over bins of 20·log10(|S_ref| / |S_est|), averaged over
    STFT frames. Magnitudes are in dB re a full-scale sine and floored at `floor_db`, so bins that
    are silent in both (an exact harmonic tone has −140 dB valleys) do not dominate."""
    a, b = _analysis_mag(reference, n_fft, hop), _analysis_mag(estimate, n_fft, hop)
    floor = 10.0 ** (floor_db / 20.0)
    diff_db = 20.0 * (torch.log10(a.clamp(min=floor)) - torch.log10(b.clamp(min=floor)))
    return float(diff_db.pow(2).mean(-2).sqrt().mean())

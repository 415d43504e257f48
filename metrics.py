"""
FVD, KVD and FAD with a feature network the user supplies (PAPER.md §7).

  frechet_distance      [paper: FVD, FAD] ‖μa−μb‖² + tr Σa + tr Σb − 2 tr((Σa^½ Σb Σa^½)^½), float64,
                        symmetric eigendecompositions only (no scipy)
  kernel_distance       [paper: KVD] unbiased MMD² with the cubic polynomial kernel (xᵀy/d + 1)³,
                        averaged over random subsets as KID does [ours]
  FeatureNet            [ours] a TorchScript (or torch.export) file the user supplies: I3D for video,
                        an audio embedding network for audio; its SHA-256 goes into every result;
                        run once on a batch of 2 clips before use (load_networks with a config)
  protocol              [ours] what every number states: network, counts, split, frames, fps,
                        resolution, sample rate
  distribution_metrics  both sets read once, every loaded network fed the same batch: what
                        evaluate.py's command line runs and what the tests check

This code downloads no weights: the user supplies each network as a TorchScript file. A missing
file is a clear error that names the flag that supplies it, and in a results JSON the metric is
`null` with a "reason", never 0. A file that is no network, or whose network does not take the
input below or does not return B×D features, stops the run with one line naming the flag and the
file (SystemExit, as pipeline.load_checkpoint does for checkpoints).
"""
import hashlib
import os
import re
import warnings
import zipfile

import numpy as np
import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# Fréchet distance and kernel distance (FVD / FAD, KVD)
# ---------------------------------------------------------------------------------------------
def _as_f64(x) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if x.ndim != 2:
        raise ValueError(f"features must be n×D (clips × feature width), got {tuple(x.shape)}")
    return x.detach().to("cpu", torch.float64)


def _sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric PSD matrix by eigh; tiny negative eigenvalues (round-off) -> 0."""
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(feats_a, feats_b) -> float:
    """Fréchet distance between Gaussians fitted to two n×D feature sets (float64):
    ‖μa−μb‖² + tr Σa + tr Σb − 2 tr((Σa^½ Σb Σa^½)^½). The inner matrix is symmetric PSD, so its
    trace root is the sum of the roots of its eigenvalues: eigh twice, no general sqrtm."""
    a, b = _as_f64(feats_a), _as_f64(feats_b)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    root_a = _sqrtm_psd(cov_a)
    inner = root_a @ cov_b @ root_a
    tr_cross = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * tr_cross)


def _mmd2_unbiased(x, y) -> float:
    """Unbiased MMD² with k(x, y) = (xᵀy/d + 1)³: the diagonals k(x_i, x_i) are left out."""
    d = x.shape[1]
    kern = lambda p, q: (p @ q.T / d + 1) ** 3
    kxx, kyy, kxy = kern(x, x), kern(y, y), kern(x, y)
    m, n = len(x), len(y)
    return float((kxx.sum() - kxx.diag().sum()) / (m * (m - 1))
                 + (kyy.sum() - kyy.diag().sum()) / (n * (n - 1)) - 2 * kxy.mean())


def kernel_distance(feats_a, feats_b, subset_size=1000, num_subsets=100, seed=0) -> float:
    """KVD / KID: unbiased MMD² with the cubic polynomial kernel, averaged over `num_subsets` random
    subsets of `subset_size` from each set (KID's recipe [ours]; bounds the O(N²) kernel matrix).
    When both sets are no larger than `subset_size`, it is one MMD² over everything. Unbiased, so
    it can be slightly negative for two samples of one distribution. Reported raw (not ×1000):
    check a table's scaling before comparing."""
    a, b = _as_f64(feats_a), _as_f64(feats_b)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"kernel_distance needs at least two samples per set, got {len(a)} and {len(b)}")
    if len(a) <= subset_size and len(b) <= subset_size:
        return _mmd2_unbiased(a, b)
    m = min(subset_size, len(a), len(b))
    gen = torch.Generator().manual_seed(seed)
    return float(np.mean([_mmd2_unbiased(a[torch.randperm(len(a), generator=gen)[:m]],
                                         b[torch.randperm(len(b), generator=gen)[:m]])
                          for _ in range(num_subsets)]))


# ---------------------------------------------------------------------------------------------
# Feature networks (user-supplied TorchScript) and the results protocol
# ---------------------------------------------------------------------------------------------
FLAGS = {"video": "--i3d", "audio": "--audio_net"}   # the CLI flag that supplies each network


class FeatureNetMissing(FileNotFoundError):
    """The feature network file was not given or does not exist (this code downloads no weights)."""


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# What each kind of network is given, as its messages state it.
INPUT = {"video": "B×3×T×224×224 float in [-1, 1], RGB", "audio": "B×N float waveform"}


def probe_batch(kind, cfg, b=2) -> torch.Tensor:
    """b zero clips as the datasets give them: video b×3×T×S×S, or wave b×N."""
    if kind == "video":
        return torch.zeros(b, 3, cfg.frames, cfg.image_size, cfg.image_size)
    return torch.zeros(b, cfg.clip_samples)


def shape_text(shape) -> str:
    return "×".join(map(str, shape))


def one_line(e: Exception) -> str:
    """An exception as one short line: the first sentence of the last line of its message (where
    TorchScript puts the error, after the interpreter's traceback), with its type in front unless
    that line already names one."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    last = (lines[-1] if lines else "").split(". ")[0]
    return last if re.match(r"[\w.]*(Error|Exception): ", last) else f"{type(e).__name__}: {last}"


class FeatureNet:
    """A feature network loaded from a TorchScript file (`torch.jit.save` of a scripted or traced
    module) or a `torch.export.save` archive, told apart by their contents [ours: the contract
    below is what this project asks the file to honour].

      kind="video" (FVD, KVD; e.g. I3D): input B×3×T×224×224 float in [-1, 1], RGB, T frames as
        given (16 here); we resize each frame bilinearly (antialiased) from S×S to 224×224.
      kind="audio" (FAD; e.g. a VGGish-style embedding wrapped to take raw audio): input B×N float
        waveform at 16 kHz (N = 25,600 for 1.6 s); we only squeeze a channel axis of 1.
      Output: B×D features (a network returning more axes is an error, not silently pooled).
    A file that is neither format, a forward that fails on that input and an output that is not
    B×D each stop the run with one line naming the flag and the file (SystemExit); `check` runs the
    forward once on a batch of 2 clips, so that happens before any clip is generated. `sha256`
    identifies the file in every result."""

    def __init__(self, path, kind, device="cpu"):
        if kind not in FLAGS:
            raise ValueError(f"kind must be one of {list(FLAGS)}, got {kind!r}")
        if path is None or not os.path.isfile(path):
            what = "no file given" if path is None else f"file not found: {path}"
            raise FeatureNetMissing(f"{kind} feature network: {what}; pass a TorchScript file "
                                    f"with {FLAGS[kind]} PATH")
        self.path, self.kind, self.device = str(path), kind, device
        self.sha256 = file_sha256(path)
        self.net = self.load(device)

    def unfit(self, what: str) -> SystemExit:
        """The one-line error for this file: the flag, the file, then `what` is wrong."""
        return SystemExit(f"{FLAGS[self.kind]} {self.path}: {what}")

    def load(self, device):
        """The module in the file: an archive holding an `archive_format` record is torch.export's
        (read from an open file, so torch does not ask for the .pt2 suffix), one holding `code/`
        is TorchScript; anything else gets one line naming the flag and the file."""
        formats = "neither a TorchScript file (torch.jit.save) nor a torch.export archive (torch.export.save)"
        if not zipfile.is_zipfile(self.path):        # both formats are zip archives
            raise self.unfit(f"{formats}: not a zip archive")
        with zipfile.ZipFile(self.path) as archive:
            names = archive.namelist()
        exported = any(name.endswith("/archive_format") for name in names)
        if not exported and not any("/code/" in name for name in names):   # TorchScript carries its code
            raise self.unfit(f"{formats}: a torch.save file (weights or a pickle); save the network with "
                             "torch.jit.save(torch.jit.script(net), PATH)")
        try:
            if exported:
                with open(self.path, "rb") as f:
                    return torch.export.load(f).module().to(device)
            with warnings.catch_warnings():          # torch ≥ 2.10 flags TorchScript as deprecated
                warnings.simplefilter("ignore", DeprecationWarning)
                return torch.jit.load(self.path, map_location=device).eval()
        except Exception as e:                       # a truncated file, or one from another torch version
            raise self.unfit(f"{formats}: {one_line(e)}") from None

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "video":                     # B×3×T×S×S -> B×3×T×224×224
            b, c, t, h, w = x.shape
            frames = x.transpose(1, 2).reshape(b * t, c, h, w).float()
            if (h, w) != (224, 224):
                frames = F.interpolate(frames, size=(224, 224), mode="bilinear",
                                       align_corners=False, antialias=h > 224 or w > 224)
            return frames.reshape(b, t, c, 224, 224).transpose(1, 2).clamp(-1, 1)
        return x.reshape(x.shape[0], -1).float() if x.ndim == 3 else x.float()  # B×1×N -> B×N

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """A batch of clips (video B×3×T×S×S or wave B×N) -> B×D float64 features on the CPU."""
        given = self.prepare(x)
        try:
            feats = self.net(given.to(self.device))
        except Exception as e:                       # whatever the forward raises, as one line
            raise self.unfit(f"the network fails on the input it is given, {INPUT[self.kind]} "
                             f"(here {shape_text(given.shape)}): {one_line(e)}") from None
        got = shape_text(feats.shape) if isinstance(feats, torch.Tensor) else f"a {type(feats).__name__}"
        if not isinstance(feats, torch.Tensor) or feats.ndim != 2 or len(feats) != len(x):
            raise self.unfit(f"the network must return B×D features (here {len(x)}×D), got {got}")
        return feats.double().cpu()

    def check(self, cfg) -> None:
        """One forward on a batch of 2 zero clips of cfg's size (probe_batch): whatever does not
        fit stops here, before any clip is generated or read."""
        self(probe_batch(self.kind, cfg))

    def embed(self, clips, batch_size=8) -> torch.Tensor:
        """Iterable of single clips (3×T×S×S or (N,)) -> n×D float64 features, in batches."""
        out, batch = [], []
        for clip in clips:
            batch.append(torch.as_tensor(clip))
            if len(batch) == batch_size:
                out.append(self(torch.stack(batch))), batch.clear()
        if batch:
            out.append(self(torch.stack(batch)))
        return torch.cat(out)


def protocol(cfg, n_real, n_generated, split, kind=None, net=None) -> dict:
    """What every FVD / KVD / FAD number must state (§7): sample counts, split, frames, fps,
    resolution, sample rate, the feature network file and its SHA-256."""
    return dict(n_real=n_real, n_generated=n_generated, split=split, frames=cfg.frames, fps=cfg.fps,
                resolution=cfg.image_size, sample_rate=cfg.sample_rate, network_kind=kind,
                network_file=net.path if net is not None else None,
                network_sha256=net.sha256 if net is not None else None)


def metric_entries(kind, real, fake, proto, reason=None) -> dict:
    """{"fvd", "kvd"} (kind "video") or {"fad"} (kind "audio") from n×D features, each a JSON-ready
    {"value", "reason", "protocol"}; with a reason the value is None, never 0. A set of fewer
    than 2 clips has no covariance: that is the reason then."""
    names = ["fvd", "kvd"] if kind == "video" else ["fad"]
    if reason is None and min(len(real), len(fake)) < 2:
        reason = f"needs at least 2 clips per set, got {len(real)} real and {len(fake)} generated"
    score = {"fvd": frechet_distance, "fad": frechet_distance, "kvd": kernel_distance}
    return {name: dict(value=None if reason else score[name](real, fake), reason=reason, protocol=proto)
            for name in names}


def load_networks(paths: dict, device="cpu", cfg=None) -> dict:
    """{"video": path or None, "audio": ...} → {kind: FeatureNet, or the reason it is missing (a str)}.
    With a config, each loaded network is run once on a batch of 2 clips of its size (FeatureNet.check):
    a file that does not fit stops here with one line, before any clip is generated."""
    nets = {}
    for kind, path in paths.items():
        try:
            nets[kind] = FeatureNet(path, kind, device)
        except FeatureNetMissing as e:
            nets[kind] = str(e)
        else:
            if cfg is not None:
                nets[kind].check(cfg)
    return nets


def distribution_metrics(nets: dict, real_batches, generated_batches, cfg, split, reason=None) -> dict:
    """FVD + KVD (a "video" network) and FAD (an "audio" network) of two sets of clips.

    nets: {kind: FeatureNet, or the reason it is missing}, as load_networks gives.
    real_batches, generated_batches: iterables of (video B×3×T×S×S, wave B×N) batches; each set is
    read ONCE, every loaded network embedding the same batch, so a generated clip is made once.
    reason: why the generated set cannot be had (then no set is read).
    → {"fvd", "kvd", "fad"} (the kinds given), each {"value", "reason", "protocol"}; a missing
    network or set gives value None with the reason, never 0."""
    loaded = {kind: net for kind, net in nets.items() if not isinstance(net, str)}
    feats = {}
    if loaded and reason is None:
        for name, batches in (("real", real_batches), ("generated", generated_batches)):
            for video, wave in batches:
                for kind, net in loaded.items():
                    feats.setdefault((name, kind), []).append(net(video if kind == "video" else wave))
    out = {}
    for kind, net in nets.items():
        why = net if isinstance(net, str) else reason
        real, fake = (None, None) if why else (torch.cat(feats["real", kind]), torch.cat(feats["generated", kind]))
        proto = protocol(cfg, None if why else len(real), None if why else len(fake), split, kind,
                         net=None if isinstance(net, str) else net)
        out.update(metric_entries(kind, real, fake, proto, why))
    return out

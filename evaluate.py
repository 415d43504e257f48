"""
Evaluation for ProAV-DiT: audio-video sync on BounceClick (PAPER.md §8) and FVD / KVD / FAD (§7).

Two families of numbers live here.

1. SYNC (§8) lives in sync.py: network-free detectors and `sync_metrics`; this file runs them
   on real, shuffled and generated pairs.

2. DISTRIBUTION METRICS WITH A USER-SUPPLIED NETWORK (§7).
     frechet_distance  [paper: FVD, FAD]  ‖μa−μb‖² + tr Σa + tr Σb − 2 tr((Σa^½ Σb Σa^½)^½), float64,
                       symmetric eigendecompositions only (no scipy)
     kernel_distance   [paper: KVD]  unbiased MMD² with the cubic polynomial kernel (xᵀy/d + 1)³,
                       averaged over random subsets as KID does [ours]
     FeatureNet        [ours] a TorchScript file the user supplies (I3D for video, an audio embedding
                       network for audio); its SHA-256 goes into every result
     protocol          [ours] the facts every number must state: network, counts, split, frames, fps,
                       resolution, sample rate
   The weights cannot be downloaded here: a missing file is a clear error that names the CLI flag,
   and in a results JSON the metric is `null` with a "reason", never 0.

3. THE COMMAND LINE: every part, one JSON (default out/eval.json), a printed summary.
     python evaluate.py                                  # every part, from out/ae.pt and out/dit.pt
     python evaluate.py --what ae                        # the autoencoder alone (needs no dit.pt)
     python evaluate.py --samples out/samples --what gen # score mp4 files made elsewhere
     python evaluate.py --what fvd --i3d i3d.pt --audio_net vggish.pt --fvd_n 2048
   Parts: ae (PSNR per modality, log-spectral distance of the inverted audio, sync of the
   reconstructions), gen (joint samples), a2v / v2a (zero-shot from held-out clips), xmodal (does
   the denoiser read the other modality: ε-MSE with matched vs shuffled partner planes), fvd (FVD,
   KVD, FAD). Every sync figure stands beside the same metrics on n real held-out pairs (the ceiling) and
   on shuffled real pairs (chance). A part that cannot run (no checkpoint, no network, a folder
   where sync needs BounceClick) is {"value": null, "reason": ...}; "protocol" states the counts,
   split, frames, fps, resolution, sample rate, checkpoints, networks (with SHA-256) and sampler.
"""
import hashlib
import json
import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from sync import sync_metrics


# ---------------------------------------------------------------------------------------------
# Fréchet distance and kernel distance (FVD / FAD, KVD)
# ---------------------------------------------------------------------------------------------
def _as_f64(x) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    assert x.ndim == 2, f"features must be N×D, got {tuple(x.shape)}"
    return x.detach().to("cpu", torch.float64)


def _sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric PSD matrix by eigh; tiny negative eigenvalues (round-off) -> 0."""
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(feats_a, feats_b) -> float:
    """Fréchet distance between Gaussians fitted to two N×D feature sets (float64):
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
    assert len(a) > 1 and len(b) > 1, "kernel_distance needs at least two samples per set"
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
    """The feature network file was not given or does not exist (it cannot be downloaded here)."""


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class FeatureNet:
    """A feature network loaded from a TorchScript file (`torch.jit.save` of a scripted or traced
    module), or a `torch.export.save` file ending in .pt2 [ours: the contract below is what this
    project asks the file to honour].

      kind="video" (FVD, KVD; e.g. I3D): input B×3×T×224×224 float in [-1, 1], RGB, T frames as
        given (16 here); we resize each frame bilinearly (antialiased) from S×S to 224×224.
      kind="audio" (FAD; e.g. a VGGish-style embedding wrapped to take raw audio): input B×N float
        waveform at 16 kHz (N = 25,600 for 1.6 s); we only squeeze a channel axis of 1.
      Output: B×D features (a network returning more axes is an error, not silently pooled).
    `sha256` identifies the file in every result."""

    def __init__(self, path, kind, device="cpu"):
        assert kind in FLAGS, f"kind must be one of {list(FLAGS)}, got {kind!r}"
        if path is None or not os.path.isfile(path):
            what = "no file given" if path is None else f"file not found: {path}"
            raise FeatureNetMissing(f"{kind} feature network: {what}. The weights cannot be "
                                    f"downloaded here; pass a TorchScript file with {FLAGS[kind]} PATH")
        self.path, self.kind, self.device = str(path), kind, device
        self.sha256 = file_sha256(path)
        if str(path).endswith(".pt2"):              # torch.export's format, TorchScript's successor
            self.net = torch.export.load(str(path)).module().to(device)
        else:
            with warnings.catch_warnings():          # torch ≥ 2.10 flags TorchScript as deprecated
                warnings.simplefilter("ignore", DeprecationWarning)
                self.net = torch.jit.load(str(path), map_location=device).eval()

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
        feats = self.net(self.prepare(x).to(self.device))
        assert feats.ndim == 2 and len(feats) == len(x), \
            f"{self.path}: expected B×D features for a batch of {len(x)}, got {tuple(feats.shape)}"
        return feats.double().cpu()

    def embed(self, clips, batch_size=8) -> torch.Tensor:
        """Iterable of single clips (3×T×S×S or (N,)) -> N×D float64 features, in batches."""
        out, batch = [], []
        for clip in clips:
            batch.append(torch.as_tensor(clip))
            if len(batch) == batch_size:
                out.append(self(torch.stack(batch))), batch.clear()
        if batch:
            out.append(self(torch.stack(batch)))
        return torch.cat(out)


def protocol(cfg, n_real, n_generated, split, kind=None, net=None, net_path=None) -> dict:
    """What every FVD / KVD / FAD number must state (§7): sample counts, split, frames, fps,
    resolution, sample rate, the feature network file and its SHA-256."""
    return dict(n_real=n_real, n_generated=n_generated, split=split, frames=cfg.frames, fps=cfg.fps,
                resolution=cfg.image_size, sample_rate=cfg.sample_rate, network_kind=kind,
                network_file=net.path if net is not None else net_path,
                network_sha256=net.sha256 if net is not None else None)


def metric_entries(kind, real, fake, proto, reason=None) -> dict:
    """{"fvd", "kvd"} (kind "video") or {"fad"} (kind "audio") from N×D features, each a JSON-ready
    {"value", "reason", "protocol"}; with a reason the value is None, never 0."""
    names = ["fvd", "kvd"] if kind == "video" else ["fad"]
    score = {"fvd": frechet_distance, "fad": frechet_distance, "kvd": kernel_distance}
    return {name: dict(value=None if reason else score[name](real, fake), reason=reason, protocol=proto)
            for name in names}


def distribution_metrics(kind, net_path, real_clips, generated_clips, cfg, split,
                         batch_size=8) -> dict:
    """FVD + KVD (kind="video") or FAD (kind="audio") of two lists of single clips (see
    FeatureNet.embed); `net_path` a file or a loaded FeatureNet. A missing network gives value None
    with the reason, never 0."""
    try:
        net = net_path if isinstance(net_path, FeatureNet) else FeatureNet(net_path, kind)
    except FeatureNetMissing as e:
        proto = protocol(cfg, len(real_clips), len(generated_clips), split, kind, net_path=net_path)
        return metric_entries(kind, None, None, proto, reason=str(e))
    real, fake = net.embed(real_clips, batch_size), net.embed(generated_clips, batch_size)
    return metric_entries(kind, real, fake, protocol(cfg, len(real), len(fake), split, kind, net=net))


# ---------------------------------------------------------------------------------------------
# The command line: every part, one JSON, a printed summary
# ---------------------------------------------------------------------------------------------
SETTINGS = dict(          # each overridable as --name value (config.parse_cli, as in train.py)
    what="",              # parts, comma-separated: ae, gen, a2v, v2a, xmodal, fvd; "" = all of them
    out_dir="out",        # where ae.pt and dit.pt are
    out="",               # the results JSON; "" = <out_dir>/eval.json
    data=None,            # held-out clips: None = what ae.pt trained on; "" = BounceClick (seed+1000);
                          # a folder = its eval split (the centred 1.6 s of each file)
    samples="",           # a folder of generated mp4 files to score (gen, fvd) instead of sampling
    n=16,                 # clips per set for ae / gen / a2v / v2a: generated, real and shuffled alike
    fvd_n=None,           # clips per set for FVD / KVD / FAD: None = 2048 (§7) on a GPU, n on a CPU
    i3d="",               # TorchScript video feature network (FVD, KVD); none: null + reason
    audio_net="",         # TorchScript audio embedding network (FAD); none: null + reason
    sampler="ddim",       # "ddim" or "ddpm" (ancestral)
    steps=50,             # denoising steps, respaced from the 1000 of training
    eta=0.0,              # DDIM noise (0: deterministic)
    cfg_scale=1.0,        # classifier-free guidance scale (--cfg); 1 = none
    guidance=16.0,        # a2v / v2a: reconstruction guidance weight (Diffusion.sample); 0 = replacement
                          # only. At tiny, V2A sync-F1 0.50 (w=0) → 0.86 (16); 4 gives less, 32 and 64
                          # the same as 16 (README)
    batch_size=16,        # clips per sampling / autoencoder / feature batch
    seed=0,               # sampling noise
    preset="tiny",        # the config when there is no ae.pt to read it from (--samples alone)
    device="auto",        # "auto": cuda if available, else cpu
)
PARTS = ("ae", "gen", "a2v", "v2a", "xmodal", "fvd")
XMODAL_T = (0.1, 0.3, 0.5, 0.7)   # the xmodal part's noise levels, as fractions of the T steps
PAPER_FVD_N = 2048
NO_SYNC = "sync needs BounceClick's known events, and the held-out clips are a folder (see fvd)"


def shuffled(pairs):
    """Video i with the audio of clip i+1: chance-level pairs (n ≥ 2)."""
    return [(pairs[i][0], pairs[(i + 1) % len(pairs)][1]) for i in range(len(pairs))]


def not_run(reason) -> dict:
    return {"value": None, "reason": reason}


def _checkpoint(out_dir, stage):
    """(the checkpoint or None, its protocol entry: file, SHA-256, step, or why it is missing)."""
    from pipeline import load_checkpoint
    path = os.path.join(out_dir, f"{stage}.pt")
    try:
        ck = load_checkpoint(path, stage, f"python train.py --stage {stage}")
    except SystemExit as e:                          # missing, unreadable or of the wrong stage
        return None, dict(file=path, reason=str(e))
    info = dict(file=path, sha256=file_sha256(path), step=ck["step"], reason=None,
                trained_on=ck["train"].get("data") or "BounceClick", train_seed=ck["train"].get("seed"))
    if stage == "dit":
        info.update(ae_step=ck["ae_step"], latent_scale=float(ck["latent_scale"]))
    return ck, info


class Evaluation:
    """What the parts share: config, checkpoints, held-out clips, models, and the generated clips
    (the first n are kept, so gen and fvd score the same samples)."""

    def __init__(self, a, device):
        from config import Config, get_config
        from data import VIDEO_EXTENSIONS
        self.a, self.device = a, device
        self.ae_ck, self.ae_info = _checkpoint(a["out_dir"], "ae")
        self.dit_info = _checkpoint(a["out_dir"], "dit")[1]      # load_models reads its weights
        trained = self.ae_ck["train"] if self.ae_ck else {}
        self.cfg = Config.from_dict(self.ae_ck["config"]) if self.ae_ck else get_config(a["preset"])
        self.data = trained.get("data", "") if a["data"] is None else a["data"]
        self.heldout_seed = trained.get("seed", 0) + 1000      # train.py's held-out BounceClick
        self.fvd_n = a["fvd_n"] or (PAPER_FVD_N if device.type == "cuda" else a["n"])
        self.files = None
        if a["samples"]:
            folder = a["samples"]
            self.files = sorted(os.path.join(folder, f) for f in (os.listdir(folder) if os.path.isdir(folder) else [])
                                if f.lower().endswith(VIDEO_EXTENSIONS))
            if not self.files:
                raise SystemExit(f"--samples {folder}: not a folder of video files ({', '.join(VIDEO_EXTENSIONS)})")
        self.gen = torch.Generator().manual_seed(a["seed"])
        self.kept, self.networks, self._ds, self._real, self._ref, self._models = [], {}, None, None, None, None

    def autocast(self):
        from pipeline import autocast   # imported late, like the other pipeline parts here
        return autocast(self.device)

    def split(self) -> str:
        if self.data:
            return f"{self.data}, eval split (the centred 1.6 s of each file)"
        return (f"BounceClick seed {self.heldout_seed}, clips 0..{max(self.a['n'], self.fvd_n) - 1} "
                f"(held out: training uses seed {self.heldout_seed - 1000})")

    # ---- real clips, and the ceiling / chance rows every sync figure stands beside
    def dataset(self):
        import data
        if self._ds is None:
            self._ds = (data.VideoFolder(self.data, self.cfg, "eval", os.path.join(self.a["out_dir"], "cache"))
                        if self.data else data.BounceClick(self.cfg, max(self.a["n"], self.fvd_n), self.heldout_seed))
        return self._ds

    def real(self):
        """The first n held-out items: dicts of video, audio (mel frames), wave, label."""
        self._real = self._real or [self.dataset()[i] for i in range(min(self.a["n"], len(self.dataset())))]
        return self._real

    def real_batches(self, k):
        bs = self.a["batch_size"]
        for start in range(0, min(k, len(self.dataset())), bs):
            items = [self.dataset()[i] for i in range(start, min(start + bs, k, len(self.dataset())))]
            yield torch.stack([it["video"] for it in items]), torch.stack([it["wave"] for it in items])

    def beside(self, **scored) -> dict:
        """Sync of each named list of (video, wave) pairs, with the n held-out real pairs (the
        ceiling) and shuffled real pairs (chance) beside them."""
        sync = lambda pairs: sync_metrics(pairs, self.cfg.fps, self.cfg.sample_rate)
        if self._ref is None:
            pairs = [(it["video"], it["wave"]) for it in self.real()]
            self._ref = dict(real=sync(pairs), shuffled=sync(shuffled(pairs)))
        return {**{name: sync(pairs) for name, pairs in scored.items()}, **self._ref}

    # ---- generated clips
    def models(self):
        """MDSA + the EMA STDiT, or the reason they cannot be loaded (a string)."""
        if self._models is None:
            from pipeline import load_models
            try:
                self._models = load_models(self.a["out_dir"], self.device)
            except SystemExit as e:
                self._models = str(e)
        return self._models

    def cannot_generate(self):
        """None when generated clips can be had (--samples, or out_dir/dit.pt), else the reason."""
        return None if self.files or not isinstance(self.models(), str) else self.models()

    def sample(self, k, **kw):
        from pipeline import generate
        a = self.a
        with self.autocast():
            video, wave = generate(self.models(), k, sampler=a["sampler"], steps=a["steps"], eta=a["eta"],
                                   cfg_scale=a["cfg_scale"], generator=self.gen, **kw)
        return video.float().cpu(), wave.float().cpu()

    def read_samples(self, start, k):
        from data import load_clip
        try:
            clips = [load_clip(path, self.cfg) for path in self.files[start:start + k]]
        except ValueError as e:                      # names the file and what is wrong with it
            raise SystemExit(f"--samples: {e}") from None
        return tuple(map(torch.stack, zip(*clips))) if clips else None

    def generated_batches(self, k):
        """Up to k generated clips as (video B×3×T×S×S, wave B×N) batches: the kept ones first, then
        new ones (sampled, or read from --samples); the first n are kept for the next part."""
        bs, done = self.a["batch_size"], 0
        while done < k:
            if done < len(self.kept):
                video, wave = map(torch.stack, zip(*self.kept[done:done + min(bs, k - done)]))
            else:
                new = self.read_samples(done, min(bs, k - done)) if self.files else self.sample(min(bs, k - done))
                if new is None:
                    return                           # the --samples folder holds fewer than k files
                video, wave = new
                self.kept += list(zip(video, wave))[:max(0, self.a["n"] - len(self.kept))]
            yield video, wave
            done += len(video)

    # ---- the parts
    @torch.no_grad()
    def part_ae(self) -> dict:
        """MDSA on the held-out clips: PSNR per modality, log-spectral distance of the inverted audio,
        and (BounceClick) sync of the reconstructions beside the projection's own round trip."""
        from autoencoder import MDSA
        from data import frames_to_wave, log_spectral_distance
        if self.ae_ck is None:
            return not_run(self.ae_info["reason"])
        from pipeline import load_weights
        ae = MDSA(self.cfg)
        try:
            load_weights(ae, self.ae_ck["model"], self.ae_info["file"], "python train.py --stage ae")
        except SystemExit as e:                      # weights from older code: say so, run the rest
            return not_run(str(e))
        ae, items, bs = ae.to(self.device).eval(), self.real(), self.a["batch_size"]
        sq_err, lsd, rec_pairs, proj_pairs = {"video": [], "audio": []}, {"rec": [], "proj": []}, [], []
        for start in range(0, len(items), bs):
            chunk = items[start:start + bs]
            video, audio, wave = (torch.stack([it[k] for it in chunk]) for k in ("video", "audio", "wave"))
            with self.autocast():
                rec_v, rec_a = ae.decode(ae.encode(video.to(self.device), audio.to(self.device)))
            rec_v, rec_a = rec_v.float().clamp(-1, 1).cpu(), rec_a.float().clamp(-1, 1).cpu()
            sq_err["video"].append((rec_v.double() - video).pow(2).flatten())
            sq_err["audio"].append((rec_a.double() - audio).pow(2).flatten())
            rec_wave, proj_wave = frames_to_wave(rec_a, self.cfg), frames_to_wave(audio, self.cfg)
            lsd["rec"] += [log_spectral_distance(w, r) for w, r in zip(wave, rec_wave)]
            lsd["proj"] += [log_spectral_distance(w, p) for w, p in zip(wave, proj_wave)]
            rec_pairs += list(zip(rec_v, rec_wave))
            proj_pairs += list(zip(video, proj_wave))
        # PSNR over all clips' elements, peak-to-peak 2 (autoencoder.psnr's definition)
        psnr_db = {k: float(10 * torch.log10(4.0 / torch.cat(v).mean().clamp_min(4e-10))) for k, v in sq_err.items()}
        return dict(reason=None, n_clips=len(items), psnr_video_db=psnr_db["video"],
                    psnr_audio_frames_db=psnr_db["audio"], lsd_db=float(np.mean(lsd["rec"])),
                    lsd_projection_only_db=float(np.mean(lsd["proj"])), sync_reason=NO_SYNC if self.data else None,
                    sync=None if self.data else self.beside(reconstruction=rec_pairs, projection_only=proj_pairs))

    def part_gen(self) -> dict:
        """Joint generation: sync of n generated clips (and of their shuffled pairs)."""
        if self.data or self.cannot_generate():
            return not_run(NO_SYNC if self.data else self.cannot_generate())
        pairs = [clip for video, wave in self.generated_batches(self.a["n"]) for clip in zip(video, wave)]
        sync = self.beside(generated=pairs, generated_shuffled=shuffled(pairs))
        return dict(reason=None, n_clips=len(pairs), source=self.a["samples"] or "sampled from " + self.a["out_dir"],
                    sync=sync, one_disc_frames={k: v["disc_detection_rate"] for k, v in sync.items()})

    def part_zero_shot(self, mode) -> dict:
        """A2V (generated video vs the given audio) or V2A (the given video vs generated audio) from
        each of the n held-out clips; "generated_shuffled" pairs clip i's output with clip i+1's input."""
        if self.data or isinstance(self.models(), str):
            return not_run(NO_SYNC if self.data else self.models())
        pairs, items, bs = [], self.real(), self.a["batch_size"]
        for i in range(0, len(items), bs):  # each clip of a batch conditioned on its own held-out clip
            chunk = items[i:i + bs]
            video, wave = self.sample(len(chunk), mode=mode, guidance=self.a["guidance"],
                                      cond_video=torch.stack([it["video"] for it in chunk]),
                                      cond_wave=torch.stack([it["wave"] for it in chunk]),
                                      label=(torch.stack([it["label"] for it in chunk])
                                             if self.models().cfg.num_classes else None))
            pairs += list(zip(video, wave))
        return dict(reason=None, n_clips=len(pairs), sync=self.beside(generated=pairs, generated_shuffled=shuffled(pairs)))

    @torch.no_grad()
    def part_xmodal(self) -> dict:
        """Does the denoiser read the other modality? [ours] On the n held-out clips' latents: the
        MSE of ε̂ on one modality's three planes when the other three come from the same clip
        ("matched") or from the next clip ("shuffled"), all six noised to the same t with the same
        noise. Matched below shuffled: the STDiT uses the other stream, the precondition of sync;
        equal: it makes each modality on its own. Needs no BounceClick, so it runs on folders too."""
        if isinstance(self.models(), str):
            return not_run(self.models())
        from model import stack_planes
        from pipeline import VIDEO_PLANES
        m, items, bs = self.models(), self.real(), self.a["batch_size"]
        z = []
        for i in range(0, len(items), bs):
            chunk = items[i:i + bs]
            with self.autocast():
                planes = m.ae.encode(torch.stack([it["video"] for it in chunk]).to(self.device),
                                     torch.stack([it["audio"] for it in chunk]).to(self.device))
            z.append(stack_planes(planes).float() * m.latent_scale)     # n×c×6×L×L, as the STDiT saw them
        z, gen = torch.cat(z), torch.Generator().manual_seed(self.a["seed"])
        mse = {f"{who}_{pairing}": [] for who in ("audio", "video") for pairing in ("matched", "shuffled")}
        steps = [int(f * m.diffusion.num_timesteps) for f in XMODAL_T]
        for step in steps:
            t = torch.full((len(z),), step, device=self.device)
            noise = torch.randn(z.shape, generator=gen).to(self.device)
            for who in ("audio", "video"):
                own = (VIDEO_PLANES if who == "video" else ~VIDEO_PLANES).to(self.device)   # over the 6 planes
                for pairing, other in (("matched", z), ("shuffled", z.roll(1, 0))):
                    x_t = m.diffusion.q_sample(torch.where(own[:, None, None], z, other), t, noise)
                    with self.autocast():
                        eps = torch.cat([m.diffusion.predict_eps(m.dit, x_t[i:i + bs], t[i:i + bs]).float()
                                         for i in range(0, len(z), bs)])
                    mse[f"{who}_{pairing}"].append((eps - noise)[:, :, own].pow(2).mean().item())
        return dict(reason=None, n_clips=len(z), timesteps=steps, eps_mse=mse)   # eps_mse[k][i] at timesteps[i]

    @torch.no_grad()
    def part_fvd(self) -> dict:
        """FVD, KVD (--i3d) and FAD (--audio_net): fvd_n generated vs fvd_n held-out real clips (§7)."""
        paths, nets, feats = {"video": self.a["i3d"] or None, "audio": self.a["audio_net"] or None}, {}, {}
        for kind, path in paths.items():
            try:
                nets[kind] = FeatureNet(path, kind, self.device)
            except FeatureNetMissing as e:
                nets[kind] = str(e)                  # the reason, kept in place of the network
            missing = isinstance(nets[kind], str)
            self.networks[kind] = dict(flag=FLAGS[kind], file=path, sha256=None if missing else nets[kind].sha256,
                                       reason=nets[kind] if missing else None)
        loaded = {kind: net for kind, net in nets.items() if not isinstance(net, str)}
        if loaded and not self.cannot_generate():    # one pass over each set feeds both networks
            sets = (("real", self.real_batches(self.fvd_n)), ("generated", self.generated_batches(self.fvd_n)))
            for name, batches in sets:
                for video, wave in batches:
                    for kind, net in loaded.items():
                        feats.setdefault((name, kind), []).append(net(video if kind == "video" else wave))
        out = dict(n_requested=self.fvd_n, note=None if self.fvd_n >= PAPER_FVD_N else
                   f"{self.fvd_n} clips per set, not §7's {PAPER_FVD_N}: not comparable with published numbers")
        for kind, net in nets.items():
            reason = net if isinstance(net, str) else self.cannot_generate()
            real, fake = (None, None) if reason else (torch.cat(feats["real", kind]), torch.cat(feats["generated", kind]))
            proto = protocol(self.cfg, None if reason else len(real), None if reason else len(fake), self.split(),
                             kind, net=None if isinstance(net, str) else net, net_path=paths[kind])
            out.update(metric_entries(kind, real, fake, dict(proto, n_requested=self.fvd_n), reason))
        return out

    def protocol(self, parts, out_path) -> dict:
        a, cfg = self.a, self.cfg
        generation = (dict(source=a["samples"], files=len(self.files)) if self.files else
                      dict(source="sampled", sampler=a["sampler"], steps=a["steps"], eta=a["eta"],
                           cfg_scale=a["cfg_scale"], zero_shot_guidance=a["guidance"], seed=a["seed"],
                           batch_size=a["batch_size"],
                           scored_as="decoded tensors (not re-encoded to mp4)"))
        return dict(parts=list(parts), out=out_path, split=self.split(), n=a["n"], fvd_n=self.fvd_n,
                    frames=cfg.frames, fps=cfg.fps, resolution=cfg.image_size, sample_rate=cfg.sample_rate,
                    clip_samples=cfg.clip_samples, checkpoints={"ae": self.ae_info, "dit": self.dit_info},
                    generation=generation, networks=self.networks, sync_tolerance_ms=1000.0 / cfg.fps,
                    device=str(self.device), torch=torch.__version__, settings=a)


def main(argv=None):
    import sys
    from config import parse_cli
    a = parse_cli(SETTINGS, sys.argv[1:] if argv is None else argv, aliases={"cfg": "cfg_scale"})
    parts = [p.strip() for p in a["what"].split(",") if p.strip()] or list(PARTS)
    if set(parts) - set(PARTS):
        raise SystemExit(f"--what: unknown part(s) {sorted(set(parts) - set(PARTS))}; choose from {', '.join(PARTS)}")
    if a["n"] < 2:
        raise SystemExit("--n must be at least 2: shuffled pairs need another clip")
    if a["sampler"] not in ("ddim", "ddpm"):
        raise SystemExit(f"--sampler must be ddim or ddpm, not {a['sampler']!r}")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if a["device"] == "auto" else a["device"])
    ev, results = Evaluation(a, device), {}
    for part in PARTS:                               # in this order: fvd reuses gen's clips
        if part in parts:
            results[part] = ev.part_zero_shot(part) if part in ("a2v", "v2a") else getattr(ev, f"part_{part}")()
    out_path = a["out"] or os.path.join(a["out_dir"], "eval.json")
    results = {"protocol": ev.protocol(parts, out_path), **results}
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    with open(out_path + ".tmp", "w") as f:
        json.dump(results, f, indent=2)
    os.replace(out_path + ".tmp", out_path)          # a killed run never leaves half a JSON
    print(summary(results))
    return results


COLUMNS = (("F1", "f1"), ("prec", "precision"), ("recall", "recall"), ("|off|ms", "median_abs_offset_ms"),
           ("pitch", "pitch_agreement"), ("1 disc", "disc_detection_rate"), ("events", None))
ROWS = dict(real="real pairs (ceiling)", shuffled="shuffled real pairs (chance)",
            reconstruction="ae: reconstructions", projection_only="ae: real video + projected audio",
            generated="{}: generated", generated_shuffled="{}: generated, shuffled")


def summary(results) -> str:
    """The results JSON as a few lines and one sync table (every part's rows under the shared
    ceiling and chance rows)."""
    p, ck, gen = results["protocol"], results["protocol"]["checkpoints"], results["protocol"]["generation"]
    step = lambda s: f"step {ck[s]['step']}" if ck[s]["reason"] is None else "missing"
    cell = lambda m, key: (f"{m['n_video_events']}v/{m['n_audio_events']}a" if key is None else "—" if m[key] is None
                           else f"{m[key]:.1f}" if key.endswith("_ms") else f"{m[key]:.3f}")
    lines = [f"evaluation -> {p['out']}",
             f"  held out: {p['split']}; {p['frames']} frames at {p['fps']} fps, {p['resolution']}² px, "
             f"{p['sample_rate']} Hz; n = {p['n']}, fvd_n = {p['fvd_n']}",
             f"  ae.pt {step('ae')}, dit.pt {step('dit')}; generated: " +
             (f"{gen['source']} ({gen['files']} files)" if "files" in gen else
              f"{gen['sampler']}-{gen['steps']}, eta {gen['eta']}, cfg {gen['cfg_scale']}, "
              f"zero-shot guidance {gen['zero_shot_guidance']}, seed {gen['seed']}")]
    reference, rows = {}, []
    for part in (q for q in PARTS if q in results):
        r = results[part]
        if r.get("reason"):
            lines.append(f"{part:>5}: not run: {r['reason']}")
        elif part == "ae":
            lines.append(f"   ae: {r['n_clips']} clips, PSNR video {r['psnr_video_db']:.2f} dB, audio frames "
                         f"{r['psnr_audio_frames_db']:.2f} dB; LSD of the inverted audio {r['lsd_db']:.2f} dB "
                         f"(the projection alone: {r['lsd_projection_only_db']:.2f} dB)")
        elif part == "xmodal":
            mse = r["eps_mse"]
            lines.append("xmodal: ε-MSE of each modality's planes with the other's from the same clip / another clip")
            for who in ("audio", "video"):
                lines.append(f"  {who:>5} " + "  ".join(f"t={t}: {m:.4f} / {s:.4f}" for t, m, s in
                                                      zip(r["timesteps"], mse[who + "_matched"], mse[who + "_shuffled"])))
        elif part == "fvd":
            for name in ("fvd", "kvd", "fad"):
                e, q = r[name], r[name]["protocol"]
                lines.append(f"{name:>5}: " + (f"null: {e['reason']}" if e["value"] is None else
                                               f"{e['value']:.4g} ({q['n_real']} real vs {q['n_generated']} "
                                               f"generated, {q['network_file']})"))
        for name, m in (r.get("sync") or {}).items():
            if name in ("real", "shuffled"):
                reference[name] = m                  # the same held-out pairs in every part
            else:
                rows.append((ROWS[name].format(part), m))
    rows = [(ROWS[name], m) for name, m in reference.items()] + rows
    if rows:
        lines.append(f"\n  sync (tolerance {p['sync_tolerance_ms']:.0f} ms)".ljust(40)
                     + "".join(f"{h:>9}" for h, _ in COLUMNS))
        lines += ["  " + label.ljust(37) + "".join(f"{cell(m, key):>9}" for _, key in COLUMNS) for label, m in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

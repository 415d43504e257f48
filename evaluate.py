"""
Evaluation for ProAV-DiT: audio-video sync on BounceClick (PAPER.md §8) and FVD / KVD / FAD (§7).

  python evaluate.py                                  # every part, from out/ae.pt and out/dit.pt
  python evaluate.py --n 256 --batch_size 64          # the figures of README.md and RESULTS.md
  python evaluate.py --what ae                        # the autoencoder alone (needs no dit.pt)
  python evaluate.py --samples out/samples --what gen # score mp4 files made elsewhere
  python evaluate.py --what fvd --i3d i3d.pt --audio_net vggish.pt --fvd_n 2048

Writes out/eval.json (every number with its protocol), out/report.html (+ out/report/: the clips,
their sync timelines, the training curves; report.py) and prints a summary. `--help` lists the settings.

FVD / KVD / FAD come from metrics.py: a user-supplied feature network, and `null` with the reason
when there is none, never 0. Each given network runs once on 2 clips before any part does: a file
that is no network, or whose input or output does not fit, stops the run with one line.
The file, top to bottom:
1. The parts, one function each over one shared `Context`: eval_ae (PSNR per modality, log-spectral
   distance of the inverted audio, sync of the reconstructions), eval_gen (joint samples),
   eval_conditional (A2V / V2A from held-out clips), eval_xmodal (does the denoiser read the other
   modality: ε-MSE with matched vs shuffled partner planes), eval_fvd. Every sync figure stands
   beside the same metrics on n real held-out pairs (the ceiling) and shuffled real pairs (chance).
   A part that cannot run raises `NotRun`, and its entry is {"value": null, "reason": ...}.
2. main and the printed summary.
Every part prints one progress line (the part, clips done of n); the sampling choices are
sampling.Sampling's, those left "auto" decided by the denoiser's training mixture.
"""
import json
import os
import sys
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm import tqdm

import sampling
from audio import frames_to_wave, log_spectral_distance
from autoencoder import MDSA, psnr_of_mse
from config import Config, Preset, fields_of, get_config, need, parse_cli, settings_of
from data import HELDOUT_SEED_OFFSET, VIDEO_EXTENSIONS, BounceClick, VideoFolder, load_clip
from sampling import Sampling
from metrics import FLAGS, distribution_metrics, file_sha256, load_networks
from model import VIDEO_PLANES, stack_planes
from pipeline import (Precision, autocast, generate, generate_heldout, load_checkpoint, load_models, load_weights,
                      pick_device)
from report import sync_text, write_report
from sync import sync_metrics


# =============================================================================================
# 1. The parts over one shared context
# =============================================================================================
# ----------------------------------------------------------------------------- settings
what = ""               # parts, comma-separated: ae, gen, a2v, v2a, xmodal, fvd; "" = all of them
out_dir = "out"         # where ae.pt and dit.pt are; eval.json, report.html and report/ go there too
data = "auto"           # held-out clips: "auto" = what ae.pt trained on; "" = BounceClick's held-out seeds;
                        # a folder = its eval split (the centred 1.6 s of each file)
samples = ""            # a folder of generated mp4 files to score (gen, fvd) instead of sampling
n = 16                  # clips per set for ae / gen / a2v / v2a / xmodal: generated, real and shuffled alike
fvd_n = 0               # clips per set for FVD / KVD / FAD; 0 = 2048 (§7) on a GPU, n on a CPU
i3d = ""                # TorchScript video feature network (FVD, KVD); none: null + reason
audio_net = ""          # TorchScript audio embedding network (FAD); none: null + reason
batch_size = 16         # clips per sampling / autoencoder / feature batch
seed = 0                # the one seed of every generated clip
preset: Preset = "tiny"  # the config when there is no ae.pt to read it from (--samples alone)
report = True           # also write report.html and its media (report/) into out_dir
report_clips = 4        # held-out clips the report shows side by side
device = "auto"         # "auto" (cuda if available, else cpu), "cpu", "cuda" or "cuda:K"
precision: Precision = "auto"  # "auto": bf16 on GPUs and on CPUs with fast bf16, else fp32; pin it to
                               # compare figures across kinds of machine

SETTINGS = settings_of(globals(), __file__)
SAMPLING = fields_of(Sampling, sampling.__file__)   # --sampler, --steps, ... with their defaults
PARTS = ("ae", "gen", "a2v", "v2a", "xmodal", "fvd")   # in this order: fvd reuses gen's clips
XMODAL_T = (0.1, 0.3, 0.5, 0.7)   # the xmodal part's noise levels, as fractions of the way to pure noise
PAPER_FVD_N = 2048
NO_SYNC = "sync needs BounceClick's known events, and the held-out clips are a folder (see fvd)"


class NotRun(Exception):
    """A part that cannot run; str() is the reason that goes into the results."""


@dataclass
class Context:
    """What the parts share beside the settings: config, checkpoints, held-out clips, models,
    generated clips (the first n are kept, so gen and fvd score the same samples) and the clips
    the report shows."""
    device: torch.device
    cfg: Config
    how: Sampling                 # the sampling choices; resolved for the denoiser once it loads
    ae_ck: dict                   # the autoencoder checkpoint, or None
    checkpoints: dict             # {"ae": info, "dit": info}: file, SHA-256, step, or the reason it is missing
    data: str                     # "" = BounceClick, else a folder
    heldout_seed: int
    fvd_n: int
    files: list                   # --samples' mp4 files, or None
    gen: torch.Generator          # every sampling draw
    nets: dict = field(default_factory=dict)       # {kind: metrics.FeatureNet, or why it is missing} (fvd)
    kept: list = field(default_factory=list)       # generated (video, wave) pairs, the first n
    networks: dict = field(default_factory=dict)   # protocol entries of the feature networks
    shown: dict = field(default_factory=dict)      # {"real", "reconstruction", "joint", "a2v", "v2a"}: report clips
    cache: dict = field(default_factory=dict)      # dataset, real items, reference sync, models


def checkpoint_info(stage):
    """(the checkpoint or None, its protocol entry: file, SHA-256, step, or why it is missing)."""
    path = os.path.join(out_dir, f"{stage}.pt")
    try:
        ck = load_checkpoint(path, stage)
    except SystemExit as e:                          # missing, unreadable or of the wrong stage
        return None, dict(file=path, reason=str(e))
    info = dict(file=path, sha256=file_sha256(path), step=ck["step"], reason=None,
                trained_on=ck["train"].get("data") or "BounceClick", train_seed=ck["train"].get("seed"))
    if stage == "dit":
        info.update(ae_step=ck["ae_step"], latent_scale=float(ck["latent_scale"]))
    return ck, info


def make_context(how: Sampling, device) -> Context:
    ae_ck, ae_info = checkpoint_info("ae")
    dit_info = checkpoint_info("dit")[1]             # load_models reads its weights
    trained = ae_ck["train"] if ae_ck else {}
    cfg = Config.from_dict(ae_ck["config"]) if ae_ck else get_config(preset)
    files = None
    if samples:
        files = sorted(os.path.join(samples, f) for f in (os.listdir(samples) if os.path.isdir(samples) else [])
                       if f.lower().endswith(VIDEO_EXTENSIONS))
        need(files, f"--samples {samples}: not a folder of video files ({', '.join(VIDEO_EXTENSIONS)})")
    return Context(device=device, cfg=cfg, how=how, ae_ck=ae_ck, checkpoints={"ae": ae_info, "dit": dit_info},
                   data=trained.get("data", "") if data == "auto" else data,
                   heldout_seed=trained.get("seed", 0) + HELDOUT_SEED_OFFSET,   # train.py's held-out BounceClick
                   fvd_n=fvd_n or (PAPER_FVD_N if device.type == "cuda" else n),
                   files=files, gen=torch.Generator().manual_seed(seed))


def split_name(ctx) -> str:
    if ctx.data:
        return f"{ctx.data}, eval split (the centred 1.6 s of each file)"
    return (f"BounceClick seed {ctx.heldout_seed}, clips 0..{max(n, ctx.fvd_n) - 1} "
            f"(held out: training uses seed {ctx.heldout_seed - HELDOUT_SEED_OFFSET})")


def progress(part: str, total: int):
    """The one progress line of a part: its name and the clips done of `total`."""
    return tqdm(total=total, desc=f"{part:>6}", unit="clip", dynamic_ncols=True, leave=False)


# ----------------------------------------------------------------------------- real clips
def held_out(ctx):
    if "dataset" not in ctx.cache:
        ctx.cache["dataset"] = (VideoFolder(ctx.data, ctx.cfg, "eval", os.path.join(out_dir, "cache"))
                                if ctx.data else BounceClick(ctx.cfg, max(n, ctx.fvd_n), ctx.heldout_seed))
    return ctx.cache["dataset"]


def real_items(ctx) -> list:
    """The first n held-out items: dicts of video, audio (mel frames), wave, label."""
    if "real" not in ctx.cache:
        ds = held_out(ctx)
        ctx.cache["real"] = [ds[i] for i in range(min(n, len(ds)))]
        ctx.shown["real"] = [(it["video"], it["wave"]) for it in ctx.cache["real"][:report_clips]]
    return ctx.cache["real"]


def real_batches(ctx, k):
    """Up to k held-out clips as (video B×3×T×S×S, wave B×N) batches."""
    ds = held_out(ctx)
    for start in range(0, min(k, len(ds)), batch_size):
        items = [ds[i] for i in range(start, min(start + batch_size, k, len(ds)))]
        yield torch.stack([it["video"] for it in items]), torch.stack([it["wave"] for it in items])


def shuffled(pairs):
    """Video i with the audio of clip i+1: chance-level pairs (n ≥ 2)."""
    return [(pairs[i][0], pairs[(i + 1) % len(pairs)][1]) for i in range(len(pairs))]


def beside(ctx, **scored) -> dict:
    """Sync of each named list of (video, wave) pairs, with the n held-out real pairs (the ceiling)
    and shuffled real pairs (chance) beside them."""
    sync = lambda pairs: sync_metrics(pairs, ctx.cfg.fps, ctx.cfg.sample_rate)
    if "reference" not in ctx.cache:
        pairs = [(it["video"], it["wave"]) for it in real_items(ctx)]
        ctx.cache["reference"] = dict(real=sync(pairs), shuffled=sync(shuffled(pairs)))
    return {**{name: sync(pairs) for name, pairs in scored.items()}, **ctx.cache["reference"]}


# ----------------------------------------------------------------------------- generated clips
def models(ctx):
    """MDSA + the EMA STDiT (pipeline.Models); raises NotRun with the reason they cannot be loaded.
    Loading them decides the sampling choices left to the denoiser (Sampling.for_model)."""
    if "models" not in ctx.cache:
        try:
            ctx.cache["models"] = load_models(out_dir, ctx.device)
        except SystemExit as e:
            ctx.cache["models"] = NotRun(str(e))
        else:
            try:
                ctx.how = ctx.how.for_model(ctx.cache["models"].process)
            except ValueError as e:                  # its message starts with the setting's name
                raise SystemExit(f"--{e}") from None
    if isinstance(ctx.cache["models"], NotRun):
        raise ctx.cache["models"]
    return ctx.cache["models"]


def cannot_generate(ctx):
    """None when generated clips can be had (--samples, or out_dir/dit.pt), else the reason."""
    if ctx.files:
        return None
    try:
        models(ctx)
    except NotRun as e:
        return str(e)
    return None


def sample(ctx, k):
    """k joint clips from the models with the sampling choices."""
    with autocast(ctx.device, precision):
        video, wave = generate(models(ctx), k, ctx.how, generator=ctx.gen)
    return video.float().cpu(), wave.float().cpu()


def read_samples(ctx, start, k):
    try:
        clips = [load_clip(path, ctx.cfg) for path in ctx.files[start:start + k]]
    except ValueError as e:                          # names the file and what is wrong with it
        raise SystemExit(f"--samples: {e}") from None
    return tuple(map(torch.stack, zip(*clips))) if clips else None


def generated_batches(ctx, k):
    """Up to k generated clips as (video B×3×T×S×S, wave B×N) batches: the kept ones first, then
    new ones (sampled, or read from --samples); the first n are kept for the next part."""
    done = 0
    while done < k:
        if done < len(ctx.kept):
            video, wave = map(torch.stack, zip(*ctx.kept[done:done + min(batch_size, k - done)]))
        else:
            new = (read_samples(ctx, done, min(batch_size, k - done)) if ctx.files
                   else sample(ctx, min(batch_size, k - done)))
            if new is None:
                return                               # the --samples folder holds fewer than k files
            video, wave = new
            ctx.kept += list(zip(video, wave))[:max(0, n - len(ctx.kept))]
        yield video, wave
        done += len(video)


# ----------------------------------------------------------------------------- the parts
@torch.no_grad()
def eval_ae(ctx) -> dict:
    """MDSA on the held-out clips: PSNR per modality, log-spectral distance of the inverted audio,
    and (BounceClick) sync of the reconstructions beside the projection's own round trip."""
    if ctx.ae_ck is None:
        raise NotRun(ctx.checkpoints["ae"]["reason"])
    ae = MDSA(ctx.cfg)
    try:
        load_weights(ae, ctx.ae_ck["model"], ctx.checkpoints["ae"]["file"], "ae")
    except SystemExit as e:                          # weights from older code: say so, run the rest
        raise NotRun(str(e)) from None
    ae, items, cfg = ae.to(ctx.device).eval(), real_items(ctx), ctx.cfg
    sq_err, lsd, rec_pairs, proj_pairs = {"video": [], "audio": []}, {"rec": [], "proj": []}, [], []
    bar = progress("ae", len(items))
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        video, audio, wave = (torch.stack([it[k] for it in chunk]) for k in ("video", "audio", "wave"))
        with autocast(ctx.device, precision):
            rec_v, rec_a = ae.decode(ae.encode(video.to(ctx.device), audio.to(ctx.device)))
        rec_v, rec_a = rec_v.float().clamp(-1, 1).cpu(), rec_a.float().clamp(-1, 1).cpu()
        sq_err["video"].append((rec_v.double() - video).pow(2).flatten())
        sq_err["audio"].append((rec_a.double() - audio).pow(2).flatten())
        rec_wave, proj_wave = frames_to_wave(rec_a, cfg), frames_to_wave(audio, cfg)
        lsd["rec"] += [log_spectral_distance(w, r) for w, r in zip(wave, rec_wave)]
        lsd["proj"] += [log_spectral_distance(w, p) for w, p in zip(wave, proj_wave)]
        rec_pairs += list(zip(rec_v, rec_wave))
        proj_pairs += list(zip(video, proj_wave))
        bar.update(len(chunk))
    bar.close()
    ctx.shown["reconstruction"] = rec_pairs[:report_clips]
    psnr_db = {k: float(psnr_of_mse(torch.cat(v).mean())) for k, v in sq_err.items()}   # over all clips' elements
    return dict(reason=None, n_clips=len(items), psnr_video_db=psnr_db["video"],
                psnr_audio_frames_db=psnr_db["audio"], lsd_db=float(np.mean(lsd["rec"])),
                lsd_projection_only_db=float(np.mean(lsd["proj"])), sync_reason=NO_SYNC if ctx.data else None,
                sync=None if ctx.data else beside(ctx, reconstruction=rec_pairs, projection_only=proj_pairs))


def eval_gen(ctx) -> dict:
    """Joint generation: sync of n generated clips (and of their shuffled pairs)."""
    if ctx.data or cannot_generate(ctx):
        raise NotRun(NO_SYNC if ctx.data else cannot_generate(ctx))
    pairs, bar = [], progress("gen", n)
    for video, wave in generated_batches(ctx, n):
        pairs += list(zip(video, wave))
        bar.update(len(video))
    bar.close()
    ctx.shown["joint"] = pairs[:report_clips]
    sync = beside(ctx, generated=pairs, generated_shuffled=shuffled(pairs))
    return dict(reason=None, n_clips=len(pairs), source=samples or "sampled from " + out_dir,
                sync=sync, one_disc_frames={k: v["disc_detection_rate"] for k, v in sync.items()},
                physical_motion={k: v["physical_motion"] for k, v in sync.items()})


def eval_conditional(ctx, mode) -> dict:
    """A2V (generated video vs the given audio) or V2A (the given video vs generated audio) from
    each of the n held-out clips; "generated_shuffled" pairs clip i's output with clip i+1's input."""
    if ctx.data:
        raise NotRun(NO_SYNC)
    pairs, items = [], real_items(ctx)
    bar = progress(mode, len(items))
    with autocast(ctx.device, precision):           # each clip conditioned on its own held-out clip
        for video, wave in generate_heldout(models(ctx), items, ctx.how, mode, generator=ctx.gen,
                                            batch_size=batch_size):
            pairs += list(zip(video, wave))
            bar.update(len(video))
    bar.close()
    ctx.shown[mode] = pairs[:report_clips]
    return dict(reason=None, n_clips=len(pairs), conditioning=ctx.how.conditioning,
                sync=beside(ctx, generated=pairs, generated_shuffled=shuffled(pairs)))


@torch.no_grad()
def eval_xmodal(ctx) -> dict:
    """Does the denoiser read the other modality? [ours] On the n held-out clips' latents: the MSE of
    ε̂ on one modality's three planes when the other three come from the same clip ("matched") or
    from the next clip ("shuffled"), all six noised to the same t with the same noise. Matched below
    shuffled: the STDiT uses the other stream, the precondition of sync; equal (ratio 1): it makes
    each modality on its own. For a denoiser trained with one modality clean (mix_clean > 0), the
    same with the partner given clean at t = 0, as A2V / V2A sample ("partner_clean"). Needs no
    BounceClick, so it runs on folders too."""
    m, z = models(ctx), held_out_latents(ctx)
    gen = torch.Generator().manual_seed(seed)
    keys = [f"{who}_{pairing}" for who in ("audio", "video") for pairing in ("matched", "shuffled")]
    mse, clean_mse = {k: [] for k in keys}, {k: [] for k in keys}
    steps = [m.process.level_at(f) for f in XMODAL_T]
    bar = progress("xmodal", len(steps) * len(z))
    for step in steps:
        t = torch.full((len(z),), step, device=ctx.device)
        noise = torch.randn(z.shape, generator=gen).to(ctx.device)
        for who in ("audio", "video"):
            own = (VIDEO_PLANES if who == "video" else ~VIDEO_PLANES).to(ctx.device)[:, None, None]  # over P
            # the partner at the same t, and (a denoiser trained with one modality clean) clean at t = 0
            given_clean = torch.stack([t, 0 * t] if who == "video" else [0 * t, t], dim=1)        # B×2
            for pairing, other in (("matched", z), ("shuffled", z.roll(1, 0))):
                both = torch.where(own, z, other)
                x_t = m.process.q_sample(both, t, noise)
                mse[f"{who}_{pairing}"].append(eps_error(ctx, x_t, t, noise, own, step))
                if m.cfg.mix_clean > 0:
                    clean_mse[f"{who}_{pairing}"].append(eps_error(ctx, torch.where(own, x_t, both), given_clean,
                                                                   noise, own, step))
        bar.update(len(z))
    bar.close()
    ratio = lambda e: {who: [a / b for a, b in zip(e[f"{who}_matched"], e[f"{who}_shuffled"])]
                       for who in ("audio", "video")} if e["audio_matched"] else None
    return dict(reason=None, n_clips=len(z), timesteps=steps, eps_mse=mse,  # eps_mse[k][i] at timesteps[i]
                matched_over_shuffled=ratio(mse), eps_mse_partner_clean=clean_mse if m.cfg.mix_clean > 0 else None,
                partner_clean_matched_over_shuffled=ratio(clean_mse))


def held_out_latents(ctx) -> torch.Tensor:
    """The n held-out clips' stacked latents `n×c×P×L×L`, scaled as the STDiT saw them in training."""
    m, items, z = models(ctx), real_items(ctx), []
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        with autocast(ctx.device, precision):
            planes = m.ae.encode(torch.stack([it["video"] for it in chunk]).to(ctx.device),
                                 torch.stack([it["audio"] for it in chunk]).to(ctx.device))
        z.append(stack_planes(planes).float() * m.latent_scale)
    return torch.cat(z)


def eps_error(ctx, x, t, noise, own, level) -> float:
    """MSE of the denoiser's ε̂ against the true noise on the `own` planes, which are at `level`;
    x `n×c×P×L×L`, t `n` or `n×2`. ε̂ is read from the prediction as the samplers read it
    (`x0_eps`), so DDPM and flow models are measured in the same units."""
    m = models(ctx)
    with autocast(ctx.device, precision):
        pred = torch.cat([m.process.predict(m.dit, x[i:i + batch_size], t[i:i + batch_size]).float()
                          for i in range(0, len(x), batch_size)])
    eps = m.process.x0_eps(x, pred, level)[1]
    return (eps - noise).masked_select(own.expand_as(eps)).pow(2).mean().item()


def network_files() -> dict:
    """The feature network files by kind: --i3d (video) and --audio_net (audio), None when not given."""
    return {"video": i3d or None, "audio": audio_net or None}


@torch.no_grad()
def eval_fvd(ctx) -> dict:
    """FVD, KVD (--i3d) and FAD (--audio_net): fvd_n generated vs fvd_n held-out real clips (§7)."""
    paths, nets = network_files(), ctx.nets
    for kind, net in nets.items():
        missing = isinstance(net, str)
        ctx.networks[kind] = dict(flag=FLAGS[kind], file=paths[kind], sha256=None if missing else net.sha256,
                                  reason=net if missing else None)
    out = dict(n_requested=ctx.fvd_n, note=None if ctx.fvd_n >= PAPER_FVD_N else
               f"{ctx.fvd_n} clips per set, not §7's {PAPER_FVD_N}: not comparable with published numbers")
    bar = progress("fvd", 2 * ctx.fvd_n)

    def counted(batches):
        for video, wave in batches:
            yield video, wave
            bar.update(len(video))
    entries = distribution_metrics(nets, counted(real_batches(ctx, ctx.fvd_n)), counted(generated_batches(ctx, ctx.fvd_n)),
                                   ctx.cfg, split_name(ctx), reason=cannot_generate(ctx))
    bar.close()
    for entry in entries.values():
        entry["protocol"]["n_requested"] = ctx.fvd_n
    return {**out, **entries}


def run_protocol(ctx, parts) -> dict:
    cfg = ctx.cfg
    generation = (dict(source=samples, files=len(ctx.files)) if ctx.files else
                  dict(source="sampled", **asdict(ctx.how), seed=seed, batch_size=batch_size,
                       scored_as="decoded tensors (not re-encoded to mp4)"))
    return dict(parts=list(parts), out=os.path.join(out_dir, "eval.json"), split=split_name(ctx), n=n,
                fvd_n=ctx.fvd_n, frames=cfg.frames, fps=cfg.fps, resolution=cfg.image_size,
                sample_rate=cfg.sample_rate, clip_samples=cfg.clip_samples, checkpoints=ctx.checkpoints,
                generation=generation, networks=ctx.networks, sync_tolerance_ms=1000.0 / cfg.fps,
                device=str(ctx.device), precision=precision, torch=torch.__version__,
                settings={k: globals()[k] for k in SETTINGS})


RUN = {"ae": eval_ae, "gen": eval_gen, "a2v": lambda ctx: eval_conditional(ctx, "a2v"),
       "v2a": lambda ctx: eval_conditional(ctx, "v2a"), "xmodal": eval_xmodal, "fvd": eval_fvd}


# =============================================================================================
# 2. The command line
# =============================================================================================
def main(argv=None):
    values, chosen = parse_cli(sys.argv[1:] if argv is None else argv, SETTINGS, doc=__doc__, fields=SAMPLING,
                               aliases={"cfg": "cfg_scale"},
                               fields_title="sampling (sampling.Sampling; auto = as the denoiser was trained):")
    globals().update(values)
    parts = [p.strip() for p in what.split(",") if p.strip()] or list(PARTS)
    need(not set(parts) - set(PARTS),
         f"--what: unknown part(s) {', '.join(sorted(set(parts) - set(PARTS)))}; choose from {', '.join(PARTS)}")
    need(n >= 2, f"--n must be at least 2 (shuffled pairs need another clip), not {n}")
    need(batch_size >= 1 and report_clips >= 0, "--batch_size must be ≥ 1 and --report_clips ≥ 0")
    need(fvd_n == 0 or fvd_n >= 2, f"--fvd_n must be 0 (the default) or at least 2 (a covariance needs two "
                                   f"clips), not {fvd_n}")
    ctx, results = make_context(Sampling(**chosen), pick_device(device)), {}
    if "fvd" in parts:                               # a network that does not fit stops here, before any clip
        ctx.nets = load_networks(network_files(), ctx.device, ctx.cfg)
    cannot_generate(ctx)                             # loads the models: a bad sampling value stops here
    for part in PARTS:
        if part in parts:
            try:
                results[part] = RUN[part](ctx)
            except NotRun as e:
                results[part] = {"value": None, "reason": str(e)}
    out_path = os.path.join(out_dir, "eval.json")
    results = {"protocol": run_protocol(ctx, parts), **results}
    os.makedirs(out_dir, exist_ok=True)
    with open(out_path + ".tmp", "w") as f:
        json.dump(results, f, indent=2)
    os.replace(out_path + ".tmp", out_path)          # a killed run never leaves half a JSON
    print(summary(results))
    if report:
        print(f"report: {write_report(out_dir, results, ctx.cfg, ctx.shown)}")
    return results


def summary(results) -> str:
    """The results JSON as a few lines and one sync table (report.sync_text: every part's rows
    under the shared ceiling and chance rows)."""
    p, ck, gen = results["protocol"], results["protocol"]["checkpoints"], results["protocol"]["generation"]
    step = lambda s: f"step {ck[s]['step']}" if ck[s]["reason"] is None else "missing"
    lines = [f"evaluation -> {p['out']}",
             f"  held out: {p['split']}; {p['frames']} frames at {p['fps']} fps, {p['resolution']}² px, "
             f"{p['sample_rate']} Hz; n = {p['n']}, fvd_n = {p['fvd_n']}",
             f"  ae.pt {step('ae')}, dit.pt {step('dit')}; generated: " +
             (f"{gen['source']} ({gen['files']} files)" if "files" in gen else
              f"{gen['sampler']}-{gen['steps']}, eta {gen['eta']}, cfg {gen['cfg_scale']}, "
              f"cross-modal guidance {gen['xmodal_cfg']}, seed {gen['seed']}"
              f"{', audio re-drawn given the video' if gen.get('resample_audio') else ''}; "
              f"a2v/v2a: conditioning {gen['conditioning']}"
              f"{', reconstruction guidance %s' % gen['guidance'] if gen['conditioning'] == 'replace' else ''}")]
    for part in (q for q in PARTS if q in results):
        r = results[part]
        if r.get("reason"):
            lines.append(f"{part:>6}: not run: {r['reason']}")
        elif part == "ae":
            lines.append(f"    ae: {r['n_clips']} clips, PSNR video {r['psnr_video_db']:.2f} dB, audio frames "
                         f"{r['psnr_audio_frames_db']:.2f} dB; LSD of the inverted audio {r['lsd_db']:.2f} dB "
                         f"(the projection alone: {r['lsd_projection_only_db']:.2f} dB)")
        elif part in ("a2v", "v2a"):
            lines.append(f"{part:>6}: conditioning {r['conditioning']}")
        elif part == "xmodal":
            mse = r["eps_mse"]
            lines.append("xmodal: ε-MSE of each modality's planes with the other's from the same clip / another "
                         "clip (matched ÷ shuffled)")
            for label, mse, ratio in (("", mse, r["matched_over_shuffled"]),
                                      (" (partner clean)", r.get("eps_mse_partner_clean"),
                                       r.get("partner_clean_matched_over_shuffled"))):
                for who in ("audio", "video") if ratio else ():
                    lines.append(f"  {who + label:>21} " + "  ".join(
                        f"t={t}: {m:.4f} / {s:.4f} ({q:.2f})" for t, m, s, q in
                        zip(r["timesteps"], mse[who + "_matched"], mse[who + "_shuffled"], ratio[who])))
        elif part == "fvd":
            for name in ("fvd", "kvd", "fad"):
                e, q = r[name], r[name]["protocol"]
                lines.append(f"{name:>6}: " + (f"null: {e['reason']}" if e["value"] is None else
                                               f"{e['value']:.4g} ({q['n_real']} real vs {q['n_generated']} "
                                               f"generated, {q['network_file']})"))
    table = sync_text(results)                       # the report's sync table, as text
    if table:
        lines += ["", *table]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""
Train ProAV-DiT in two stages, on a laptop CPU, one GPU, or many GPUs under torchrun.

  python train.py --stage ae                       # MDSA autoencoder on BounceClick (PAPER.md §3)
  python train.py --stage dit                      # STDiT on the AE's stacked latents (§4, §5)
  python train.py --stage ae --data /clips --preset paper --batch_size 8
  torchrun --nproc_per_node 8 train.py --stage dit --data /clips --preset paper

Every setting is a module-level name below with its comment (`python train.py --help` lists them);
any of them, and any field of config.Config (`--ae_channels 96`), is overridden as `--name value`.
DDP switches on only when torchrun sets RANK (gloo on CPU, nccl on GPU). Each stage keeps one
checkpoint, out/ae.pt or out/dit.pt, holding weights, EMA, optimizer, step, RNG states and the full
config; `--resume` continues exactly: batches are a pure function of (seed, step, rank), and the
global torch RNG (noise, timesteps, dropouts) is restored, so N steps + resume + N steps = 2N steps.

The recipe (each stage's default steps, batch, learning rate and optimizer, Muon's weights, the
schedule) lives in recipe.py, which bench.py shares. Reading order: the settings, the helpers
(setup, data, optimisation, checkpoints, logging), then `train_ae` and `train_dit`, one function
per stage, and `main`.
"""
import copy
import csv
import hashlib
import os
import sys
import time
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from audio import frames_to_wave, wave_to_frames
from autoencoder import MDSA, psnr
from config import DIT_FIELDS, Config, Preset, config_fields, get_config, need, parse_cli, settings_of
from data import HELDOUT_SEED_OFFSET, BounceClick, VideoFolder, save_grid, write_mp4
import diffusion
from model import STDiT, stack_planes
from pipeline import (Models, Precision, autocast, check_dit_fits_ae, generate, generate_heldout, load_checkpoint,
                      load_weights, pick_device, save_checkpoint, use_bf16)
from recipe import STAGE_DEFAULTS, TRAIN_CLIPS, dit_phase, lr_at, make_optimizer
from sampling import Sampling
from sync import sync_metrics

# ----------------------------------------------------------------------------- settings
Stage = Literal["ae", "dit"]   # the two training stages, in order
Optimizer = Literal["auto", "adamw", "muon"]  # what updates the weights (recipe.make_optimizer)
stage: Stage = "ae"    # "ae": train MDSA (§3); "dit": train the STDiT on its latents (§4)
preset: Preset = "tiny"  # a name in config.PRESETS: "tiny" (CPU default) or "paper"
data = ""              # "" = the embedded BounceClick; else a folder of .mp4/.mov/.mkv/.avi/.webm clips
out_dir = "out"        # checkpoints, logs, previews and the latent cache
resume = False         # continue out_dir/<stage>.pt exactly where it stopped
max_steps = 0          # optimizer steps; 0 = the stage's default in recipe.STAGE_DEFAULTS
batch_size = 0         # clips per step per process; 0 = the stage's default
lr = 0.0               # peak learning rate (AdamW's, and Muon's in AdamW units); 0 = the stage's default
optimizer: Optimizer = "auto"  # "adamw", or "muon": Muon for the blocks' weight matrices, AdamW for the rest;
                               # "auto" = the stage's default
warmup_steps = 0       # linear warm-up steps, then cosine decay to 10% of lr; 0 = the stage's default
grad_clip = 1.0        # global gradient-norm clip: one bad batch cannot wreck the run
weight_decay = 0.0     # AdamW weight decay; none, as DiT
ema_decay = 0.0        # STDiT weight EMA that sampling uses; 0 = the trained weights themselves (an EMA
                       # would blend the last 1,000 steps' guided phase with the steps before it)
train_clips = TRAIN_CLIPS  # BounceClick clips that form the training set (the DiT caches their latents)
eval_clips = 8         # held-out clips for the AE's PSNR and the previews
log_every = 50         # steps between CSV log rows (the only reads of the loss back from the device)
preview_every = 0      # steps between previews (mp4 with sound + PNG grid, the AE's held-out PSNR); 0 = only at the
                       # end, -1 = none
save_every = 500       # steps between checkpoints (and one at the end)
sync_every = 2000      # DiT: steps between quick held-out sync checks (out/dit_sync.csv); 0 = only at the end,
                       # -1 = none. Their cost: RESULTS.md, "When does the denoiser learn sync?"
sync_clips = 24        # DiT: held-out clips per sync check, each sampled joint, A2V and V2A
sync_steps = 0         # DiT: denoiser steps per run in the sync check; 0 = sample.py's (its sampler's default)
num_workers = 0        # DataLoader workers per process (0 suits 2 CPU cores; use ~8 per GPU)
seed = 0               # weights, batches, noise: one seed fixes the run (each rank adds its rank)
device = "auto"        # "auto" (cuda if available, else cpu), "cpu", "cuda" or "cuda:K"
compile = False        # torch.compile the model being trained
grad_checkpoint = False  # recompute each STDiT/MDSA block in backward: same numbers, less memory, more time (BENCHMARKS.md)
precision: Precision = "auto"  # "auto": bf16 autocast on GPUs and on CPUs with fast bf16 matmuls, else fp32

SETTINGS = settings_of(globals(), __file__)
config_overrides = {}  # Config fields given on the command line (set by main)


# ----------------------------------------------------------------------------- setup
def setup():
    """Device, DDP and seeding for this process; sets the globals ddp, rank, world, master, dev, amp."""
    global ddp, rank, world, master, dev, amp
    ddp = "RANK" in os.environ  # torchrun sets RANK, WORLD_SIZE, LOCAL_RANK
    if ddp:
        need(device in ("auto", "cpu", "cuda"), f"--device {device}: under torchrun each process uses "
             "cuda:LOCAL_RANK; give --device cuda, cpu or auto")
        cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        dist.init_process_group("nccl" if cuda else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        dev = pick_device(f"cuda:{os.environ['LOCAL_RANK']}" if cuda else "cpu")
        if cuda:
            torch.cuda.set_device(dev)
    else:
        rank, world, dev = 0, 1, pick_device(device)
    master = rank == 0
    torch.manual_seed(seed + rank)  # each rank draws its own noise and timesteps
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: free speed; neither model needs fp32 mantissas
        torch.backends.cudnn.allow_tf32 = True
    amp = autocast(dev, precision)
    os.makedirs(out_dir, exist_ok=True)


def log(*msg):
    if master:
        tqdm.write(" ".join(str(m) for m in msg))


def wrap(model):
    """The module a step calls: compiled if asked, DDP-wrapped under torchrun (gradients all-reduced)."""
    fwd = torch.compile(model) if compile else model
    if ddp:
        fwd = DDP(fwd, device_ids=[dev.index] if dev.type == "cuda" else None)
    return fwd


class AELoss(torch.nn.Module):
    """MDSA.loss as a forward(): DDP syncs gradients only for calls that go through forward()."""

    def __init__(self, ae: MDSA):
        super().__init__()
        self.ae = ae

    def forward(self, video, audio) -> dict:
        return self.ae.loss(video, audio)


# ----------------------------------------------------------------------------- data
def dataset(cfg: Config, split: str):
    """BounceClick (train: seed, held-out: seed + HELDOUT_SEED_OFFSET) or the folder's train / eval windows."""
    if data:
        try:
            return VideoFolder(data, cfg, split=split, cache_dir=os.path.join(out_dir, "cache"))
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f"--data: {e}") from None
    size, first_seed = (train_clips, seed) if split == "train" else (eval_clips, seed + HELDOUT_SEED_OFFSET)
    return BounceClick(cfg, size=size, seed=first_seed)  # disjoint procedural seeds


def batch_indices(n: int, step: int) -> np.ndarray:
    """Dataset indices of this rank's batch at `step`: epochs of seeded permutations, sharded by rank.
    A pure function of (seed, step, rank), so a resumed run sees exactly the batches it would have."""
    pos = (step * world + rank) * batch_size + np.arange(batch_size)  # positions in the endless epoch stream
    epochs = pos // n
    out = np.empty(batch_size, dtype=np.int64)
    for e in np.unique(epochs):
        perm = np.random.default_rng([seed, int(e)]).permutation(n)
        out[epochs == e] = perm[pos[epochs == e] % n]
    return out


class StepBatches(torch.utils.data.Sampler):
    """Batch sampler whose batch at step s is `batch_indices(n, s)`, from `start` on, endlessly."""

    def __init__(self, n: int, start: int):
        self.n, self.start = n, start

    def __iter__(self):
        step = self.start
        while True:
            yield batch_indices(self.n, step).tolist()
            step += 1


def loader(ds, start_step: int):
    """Endless iterator of batches; an own generator keeps DataLoader off the global RNG (exact resume)."""
    return iter(torch.utils.data.DataLoader(
        ds, batch_sampler=StepBatches(len(ds), start_step), num_workers=num_workers,
        pin_memory=dev.type == "cuda", generator=torch.Generator(), persistent_workers=num_workers > 0))


# ----------------------------------------------------------------------------- optimisation
def optimizer_step(opt, params, loss, step) -> torch.Tensor:
    """Backward, clip, step; returns the gradient norm as a tensor (read back only when logged)."""
    for group in opt.param_groups:
        group["lr"] = lr_at(step, lr, warmup_steps, max_steps)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    return norm


def check_ranks_agree(model):
    """Under DDP every rank must hold the same weights at the end: compare a per-tensor checksum
    (sum and sum of squares, float64) across ranks, a few numbers per tensor instead of all weights."""
    if not ddp:
        return
    sums = torch.stack([torch.stack([p.detach().double().sum(), p.detach().double().pow(2).sum()])
                        for p in model.parameters()]).flatten()
    gathered = [torch.empty_like(sums) for _ in range(world)]
    dist.all_gather(gathered, sums)
    worst = max(float((g - gathered[0]).abs().max()) for g in gathered)
    log(f"ranks agree: max |checksum difference| across {world} ranks = {worst:.3g}")
    if worst > 1e-5:
        raise RuntimeError(f"DDP ranks diverged (max |Δ checksum| = {worst})")


# ----------------------------------------------------------------------------- checkpoints
def fitted_config(ckpt: dict, path: str, free=()) -> Config:
    """The config a run continues from `ckpt`, refusing one that does not fit what was asked.

    It must come from the same preset, and no explicit override of a field outside `free` may
    contradict it. Fields in `free` (the denoiser's own, when the DiT builds on the AE) take the
    preset's value or the override.
    """
    base, was = Config.from_dict(ckpt["config"]), ckpt["train"]["preset"]
    hint = (f"train the autoencoder for it first, `python train.py --stage ae --preset {preset}`"
            f" (with --out_dir to keep {path})")
    need(was == preset, f"{path} was trained at preset {was!r}, but this run asks for {preset!r}: {hint}")
    clash = [f"--{k} {v} (checkpoint: {getattr(base, k)})" for k, v in config_overrides.items()
             if k not in free and getattr(base, k) != v]
    need(not clash, f"{path} was trained with another config than this run asks for: {', '.join(clash)}; "
         + (hint if free else "drop those settings to resume, or start afresh without --resume"))
    requested = config_for({k: v for k, v in config_overrides.items() if k in free})
    return Config.from_dict({**base.to_dict(), **{k: getattr(requested, k) for k in free}})


def config_for(overrides: dict) -> Config:
    """The preset with these fields replaced, or a one-line exit naming what does not fit."""
    try:
        return get_config(preset, **overrides)
    except ValueError as e:
        raise SystemExit(str(e)) from None


def save(name: str, obj: dict):
    """Rank 0 writes out_dir/name atomically, with the RNG states and every setting of this run."""
    if master:
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state(dev)
        save_checkpoint({**obj, "rng": rng, "train": current_settings()}, os.path.join(out_dir, name))


def current_settings() -> dict:
    return {k: globals()[k] for k in SETTINGS}


def restore_rng(ckpt: dict):
    """Rank 0's state is saved; other ranks re-derive distinct streams from it."""
    torch.set_rng_state(ckpt["rng"]["torch"])
    if rank:
        torch.manual_seed(int(torch.randint(2**62, ())) + rank)
    if "cuda" in ckpt["rng"] and dev.type == "cuda":
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"], dev)


# ----------------------------------------------------------------------------- logging
def csv_log(path: str, columns: list, start_step: int):
    """Start an append-only CSV of training curves; a resumed run keeps the rows up to its step."""
    if not master:
        return
    rows = []
    if start_step and os.path.exists(path):
        with open(path) as f:
            rows = [r for r in list(csv.reader(f))[1:] if int(r[0]) <= start_step]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([columns] + rows)


def csv_row(path: str, *values):
    if master:
        with open(path, "a", newline="") as f:
            csv.writer(f).writerow([f"{v:.6g}" if isinstance(v, float) else v for v in values])


class Meter:
    """Clips per second between log rows."""

    def __init__(self):
        self.t0, self.seen = time.time(), 0

    def rate(self) -> float:
        rate, self.t0, self.seen = self.seen / (time.time() - self.t0), time.time(), 0
        return rate


def due(step: int, every: int) -> bool:
    """True every `every` steps and at the last step; 0: only at the last step; -1: never."""
    return every >= 0 and ((every > 0 and step % every == 0) or step == max_steps)


# ----------------------------------------------------------------------------- stage 1: MDSA (§3)
def train_ae():
    path = os.path.join(out_dir, "ae.pt")
    ckpt = load_checkpoint(path, "ae") if resume else None
    cfg = fitted_config(ckpt, path) if ckpt else config_for(config_overrides)
    model = MDSA(cfg).to(dev)
    model.grad_checkpoint = grad_checkpoint  # a module flag: checkpoints and configs stay unchanged
    opt = make_optimizer(model, optimizer, lr, weight_decay, fused=dev.type == "cuda", ns_bf16=use_bf16(dev))
    step = 0
    if ckpt:
        load_weights(model, ckpt["model"], path, "ae")
        opt.load_state_dict(ckpt["optimizer"])
        step = ckpt["step"]
        restore_rng(ckpt)
    fwd = wrap(AELoss(model))
    ds, held_out = dataset(cfg, "train"), dataset(cfg, "eval")
    log(f"MDSA {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params | {len(ds)} train clips | "
        f"{dev} x{world} | batch {batch_size}/process | steps {step}->{max_steps}")
    batches = loader(ds, step)
    terms = ["loss", "l1_video", "l1_audio", "mse_video", "mse_audio", "kl", "kl_share"]
    log_path = os.path.join(out_dir, "ae_log.csv")
    csv_log(log_path, ["step", *terms, "lr", "grad_norm", "clips_per_s"], step)
    csv_log(os.path.join(out_dir, "ae_heldout.csv"), ["step", "psnr_video_db", "psnr_audio_db"], step)
    bar = tqdm(total=max_steps, initial=step, disable=not master, dynamic_ncols=True, desc="ae")
    meter = Meter()
    model.train()
    while step < max_steps:
        b = next(batches)
        video, audio = b["video"].to(dev, non_blocking=True), b["audio"].to(dev, non_blocking=True)
        with amp:
            out = fwd(video, audio)
        grad_norm = optimizer_step(opt, model.parameters(), out["loss"], step)
        step, meter.seen = step + 1, meter.seen + video.shape[0] * world
        bar.update(1)
        if due(step, log_every):
            values = [out[k].item() for k in terms]
            csv_row(log_path, step, *values, lr_at(step - 1, lr, warmup_steps, max_steps), grad_norm.item(),
                    meter.rate())
            bar.set_postfix(loss=f"{values[0]:.4f}")
        if due(step, save_every):
            save("ae.pt", {"stage": "ae", "config": cfg.to_dict(), "model": model.state_dict(),
                           "optimizer": opt.state_dict(), "step": step})
        if due(step, preview_every):
            preview_ae(model, held_out, cfg, step)
            model.train()
    bar.close()
    check_ranks_agree(model)
    log(f"saved {path}")


@torch.no_grad()
def preview_ae(model, held_out, cfg, step):
    """PSNR of held-out reconstructions (printed and logged), and the first one as mp4 (with its
    inverted sound) + PNG grid."""
    if not master:
        return
    model.eval()
    n = min(len(held_out), eval_clips)
    items = [held_out[i] for i in range(n)]
    video = torch.stack([it["video"] for it in items]).to(dev)
    audio = torch.stack([it["audio"] for it in items]).to(dev)
    with amp:
        rec_v, rec_a = model.decode(model.encode(video, audio))
    rec_v, rec_a = rec_v.float().clamp(-1, 1), rec_a.float().clamp(-1, 1)
    pv, pa = psnr(rec_v, video).item(), psnr(rec_a, audio).item()
    log(f"step {step}: held-out PSNR video {pv:.2f} dB, audio frames {pa:.2f} dB ({n} clips)")
    csv_row(os.path.join(out_dir, "ae_heldout.csv"), step, pv, pa)
    d = os.path.join(out_dir, "preview")
    os.makedirs(d, exist_ok=True)
    wave = frames_to_wave(rec_a[:1].cpu(), cfg)[0]
    write_mp4(os.path.join(d, f"ae_{step:06d}.mp4"), rec_v[0].cpu(), wave, cfg)
    k = min(n, 4)  # originals above their reconstructions
    save_grid(os.path.join(d, f"ae_{step:06d}.png"), torch.cat([video[:k], rec_v[:k]]).cpu(),
              torch.cat([audio[:k], rec_a[:k]]).cpu())


# ----------------------------------------------------------------------------- stage 2: STDiT (§4, §5)
def train_dit():
    path, ae_path = os.path.join(out_dir, "dit.pt"), os.path.join(out_dir, "ae.pt")
    ae_ck = load_checkpoint(ae_path, "ae")
    ckpt = load_checkpoint(path, "dit") if resume else None
    if ckpt:
        check_dit_fits_ae(ckpt, ae_ck, path, ae_path)
    cfg = fitted_config(ckpt, path) if ckpt else fitted_config(ae_ck, ae_path, free=DIT_FIELDS)
    ae = MDSA(Config.from_dict(ae_ck["config"])).to(dev).eval()
    load_weights(ae, ae_ck["model"], ae_path, "ae")
    latents, labels = cached_latents(ae, cfg, ae_path)
    # Unit-variance latents (§4): the noise schedule assumes signal of roughly unit scale.
    scale = float(ckpt["latent_scale"]) if ckpt else float(1.0 / latents.std())
    latents = latents * scale

    started = time.time() - (ckpt.get("seconds", 0.0) if ckpt else 0.0)   # the stage's clock, across resumes
    model = STDiT(cfg).to(dev)
    model.grad_checkpoint = grad_checkpoint  # a module flag: checkpoints and configs stay unchanged
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = make_optimizer(model, optimizer, lr, weight_decay, fused=dev.type == "cuda", ns_bf16=use_bf16(dev))
    step = 0
    if ckpt:
        load_weights(model, ckpt["model"], path, "dit")
        load_weights(ema, ckpt["ema"], path, "dit")
        opt.load_state_dict(ckpt["optimizer"])
        step = ckpt["step"]
        restore_rng(ckpt)
    fwd = wrap(model)
    process = diffusion.from_config(cfg)
    log(f"STDiT {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params | {len(latents)} latents "
        f"{tuple(latents.shape[1:])} scale {scale:.3f} | {dev} x{world} | batch {batch_size}/process | "
        f"steps {step}->{max_steps}")
    log_path = os.path.join(out_dir, "dit_log.csv")
    csv_log(log_path, ["step", "loss", "lr", "grad_norm", "clips_per_s"], step)
    csv_log(os.path.join(out_dir, "dit_sync.csv"), ["step", "seconds", "joint_f1", "a2v_f1", "v2a_f1"], step)
    bar = tqdm(total=max_steps, initial=step, disable=not master, dynamic_ncols=True, desc="dit")
    latents, labels = latents.to(dev), labels.to(dev)
    ema_params, params = list(ema.parameters()), list(model.parameters())
    meter, synced = Meter(), {}                                   # synced: the last sync check, on the bar
    model.train()
    while step < max_steps:
        idx = torch.from_numpy(batch_indices(len(latents), step)).to(dev)
        x0, y = latents[idx], (labels[idx] if cfg.num_classes else None)
        # model guidance and shortcut steps (PAPER.md §5) in the last cfg.learned_guidance_steps and
        # cfg.shortcut_steps steps, the plain velocity before
        guided, shortcut = dit_phase(cfg, step, max_steps)
        scales = process.learned_scales() if guided else {}
        with amp:
            if shortcut:
                loss = process.shortcut_loss(fwd, x0, y, **scales)
            else:
                loss = process.loss(fwd, x0, y, **scales)
        grad_norm = optimizer_step(opt, params, loss, step)
        with torch.no_grad():  # EMA: ema ← decay·ema + (1−decay)·w, in one fused call
            torch._foreach_lerp_(ema_params, params, 1.0 - ema_decay)
        step, meter.seen = step + 1, meter.seen + x0.shape[0] * world
        bar.update(1)
        if due(step, log_every):
            csv_row(log_path, step, loss.item(), lr_at(step - 1, lr, warmup_steps, max_steps), grad_norm.item(),
                    meter.rate())
            bar.set_postfix(loss=f"{loss.item():.4f}", **synced)
        if due(step, save_every):
            save("dit.pt", {"stage": "dit", "config": cfg.to_dict(), "model": model.state_dict(),
                            "ema": ema.state_dict(), "optimizer": opt.state_dict(), "step": step,
                            "latent_scale": scale, "ae_step": ae_ck["step"], "seconds": time.time() - started})
        if due(step, preview_every):
            preview_dit(Models(cfg, ae, ema.eval(), process, scale), step)
        if due(step, sync_every):
            synced = check_sync(Models(cfg, ae, ema.eval(), process, scale), step, time.time() - started)
            bar.set_postfix(loss=f"{loss.item():.4f}", **synced)
    bar.close()
    check_ranks_agree(model)
    log(f"saved {path}")


def check_sync(models: Models, step: int, seconds: float) -> dict:
    """Held-out sync-F1 (sync.sync_metrics) of the EMA denoiser's joint, A2V and V2A samples on
    `sync_clips` held-out clips, sampled as sample.py samples with `sync_steps` steps (0: its own), one
    generator seeded 0 drawing the three modes in turn (pipeline.generate_heldout): the figures
    `evaluate.py --what gen,a2v,v2a --n sync_clips --batch_size sync_clips --seed 0` gives for this
    checkpoint (with `--steps sync_steps` where that is not 0).
    Appended to dit_sync.csv with the step and the stage's seconds so far; returns them for the bar."""
    if not master:
        return {}
    held_out = BounceClick(models.cfg, sync_clips, seed + HELDOUT_SEED_OFFSET)
    items = [held_out[i] for i in range(sync_clips)]
    gen, f1 = torch.Generator().manual_seed(0), {}
    for mode in ("joint", "a2v", "v2a"):
        with amp:
            pairs = [pair for video, wave in generate_heldout(models, items, Sampling(steps=sync_steps or None), mode,
                                                              generator=gen, batch_size=sync_clips)
                     for pair in zip(video, wave)]
        f1[mode] = sync_metrics(pairs, models.cfg.fps, models.cfg.sample_rate)["f1"]
    csv_row(os.path.join(out_dir, "dit_sync.csv"), step, round(seconds, 1), f1["joint"], f1["a2v"], f1["v2a"])
    return {mode: "none" if v is None else f"{v:.3f}" for mode, v in f1.items()}  # None: no events to score


def cached_latents(ae: MDSA, cfg: Config, ae_file: str):
    """Encode the training set once (MDSA means, §3) and cache N×c×6×L×L on disk next to the checkpoints.

    The cache key covers the AE checkpoint's bytes (a retrained AE never meets stale latents) and
    what decides the clips (data, count, seed, the class count that colours BounceClick's discs),
    but not the denoiser's settings, so DiT runs on one AE share one cache. Rank 0 encodes, the
    others wait and read.
    """
    with open(ae_file, "rb") as f:
        ae_sha = hashlib.sha256(f.read()).hexdigest()
    key = hashlib.sha1(repr((ae_sha, data, train_clips, seed, cfg.num_classes)).encode()).hexdigest()[:12]
    path = os.path.join(out_dir, f"latents_{key}.pt")
    if master and not os.path.exists(path):
        dl = torch.utils.data.DataLoader(dataset(cfg, "train"), batch_size=64, num_workers=num_workers,
                                         generator=torch.Generator())
        chunks, labels = [], []
        with torch.no_grad(), amp:
            for b in tqdm(dl, desc="encoding latents", dynamic_ncols=True):
                planes = ae.encode(b["video"].to(dev), b["audio"].to(dev))
                chunks.append(stack_planes(planes).float().cpu())
                labels.append(b["label"])
        save_checkpoint({"latents": torch.cat(chunks), "labels": torch.cat(labels)}, path)
    if ddp:
        dist.barrier()
    cache = torch.load(path, map_location="cpu", weights_only=True)
    return cache["latents"], cache["labels"].long()


def preview_dit(models: Models, step: int):
    """A few EMA samples, joint, sampled as sample.py samples by default, as mp4 files with sound
    and a PNG grid."""
    if not master:
        return
    n = 4
    with amp:
        video, wave = generate(models, n, generator=torch.Generator().manual_seed(0))
    d = os.path.join(out_dir, "preview")
    os.makedirs(d, exist_ok=True)
    for i in range(2):
        write_mp4(os.path.join(d, f"dit_{step:06d}_{i}.mp4"), video[i], wave[i], models.cfg)
    save_grid(os.path.join(d, f"dit_{step:06d}.png"), video, wave_to_frames(wave, models.cfg))
    log(f"step {step}: wrote {n} EMA samples to {d}")


# ----------------------------------------------------------------------------- main
def main(argv):
    """Parse the settings into this module's globals (nanoGPT style), check them, run one stage."""
    global config_overrides
    values, config_overrides = parse_cli(argv, SETTINGS, doc=__doc__, fields=config_fields())
    globals().update(values)
    for k, v in STAGE_DEFAULTS[stage].items():  # 0 or "auto" = the stage's default
        if globals()[k] in (0, "auto"):
            globals()[k] = v
    for name in ("max_steps", "batch_size", "warmup_steps", "train_clips", "eval_clips", "log_every", "save_every",
                 "sync_clips"):
        need(globals()[name] >= 1, f"--{name} must be at least 1, not {globals()[name]}")
    need(sync_steps >= 0, f"--sync_steps must be ≥ 0 (0 = sample.py's), not {sync_steps}")
    for name in ("preview_every", "sync_every"):
        need(globals()[name] >= -1, f"--{name} must be ≥ 0, or -1 for none, not {globals()[name]}")
    for name in ("num_workers", "weight_decay"):
        need(globals()[name] >= 0, f"--{name} must be ≥ 0, not {globals()[name]}")
    need(lr > 0 and grad_clip > 0, f"--lr and --grad_clip must be > 0, not {lr} and {grad_clip}")
    need(0 <= ema_decay < 1, f"--ema_decay must be in [0, 1), not {ema_decay}")
    setup()
    try:
        train_ae() if stage == "ae" else train_dit()
    finally:
        if ddp:
            dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])

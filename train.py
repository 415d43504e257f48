"""
Train ProAV-DiT in two stages, on a laptop CPU, one GPU, or many GPUs under torchrun.

  python train.py --stage ae                       # MDSA autoencoder on BounceClick (PAPER.md §3)
  python train.py --stage dit                      # STDiT on the AE's stacked latents (§4, §5)
  python train.py --stage ae --data /clips --preset paper --batch_size 8
  torchrun --nproc_per_node 8 train.py --stage dit --data /clips --preset paper

Every setting is in the block below, with a comment; any of them, and any field of config.Config
(`--ae_channels 96`), can be overridden as `--name value`. DDP switches on only when torchrun sets
RANK (gloo on CPU, nccl on GPU). Each stage keeps one checkpoint, out/ae.pt or out/dit.pt, holding
weights, EMA, optimizer, step, RNG states and the full config; `--resume` continues exactly.

Batches are a pure function of (seed, step, rank), and the global torch RNG (noise, timesteps,
dropouts) is restored on resume, so N steps + resume + N steps equals 2N steps.
"""
import copy
import csv
import hashlib
import math
import os
import sys
import time
from dataclasses import fields

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from autoencoder import MDSA, psnr
from config import Config, get_config, parse_cli, settings_block
from data import BounceClick, VideoFolder, frames_to_wave, save_grid, wave_to_frames, write_mp4
from diffusion import Diffusion
from model import STDiT, stack_planes
from pipeline import DIT_FIELDS, Models, autocast, generate, load_checkpoint, load_weights, save_checkpoint

# ----------------------------------------------------------------------------- settings
stage = "ae"           # "ae": train MDSA (§3); "dit": train the STDiT on its latents (§4)
preset = "tiny"        # a name in config.PRESETS: "tiny" (CPU default) or "paper"
data = ""              # "" = the embedded BounceClick; else a folder of .mp4/.mov/.mkv/.avi/.webm clips
out_dir = "out"        # checkpoints, logs, previews and the latent cache
resume = False         # continue out_dir/<stage>.pt exactly where it stopped
max_steps = None       # optimizer steps; None = the stage's default in STAGE_DEFAULTS
batch_size = None      # clips per step per process; None = the stage's default
lr = None              # peak AdamW learning rate; None = the stage's default
warmup_steps = 200     # linear warm-up, then cosine decay to 10% of lr (short CPU runs converge better)
grad_clip = 1.0        # global gradient-norm clip: one bad batch cannot wreck the run
weight_decay = 0.0     # as DiT: none
ema_decay = 0.999      # STDiT weight EMA (sampling uses the EMA copy)
train_clips = 4000     # BounceClick clips that form the training set (the DiT caches their latents)
eval_clips = 8         # held-out clips for the AE's PSNR and the previews
log_every = 50         # steps between CSV log rows
preview_every = 1000   # steps between previews (mp4 with sound + PNG grid); 0 = only at the end
save_every = 500       # steps between checkpoints (and one at the end)
num_workers = 0        # DataLoader workers per process (0 suits 2 CPU cores; use ~8 per GPU)
seed = 0
device = "auto"        # "auto": cuda if available, else cpu
compile = False        # torch.compile the model being trained
precision = "auto"     # "auto": bf16 autocast on GPUs and on CPUs with fast bf16 (2-2.5× here), else fp32

STAGE_DEFAULTS = {     # sized so that both stages + sampling fit 30 minutes on 2 CPU cores at tiny
    "ae": dict(max_steps=1000, batch_size=8, lr=1e-3),    # ~0.36 s/step (bf16); discs appear by ~600
                                                          # steps, and 1,500 steps gain < 0.1 dB PSNR
    "dit": dict(max_steps=15000, batch_size=32, lr=5e-4),  # ~0.08 s/step (bf16, patch 2): the denoiser
                                                           # is what limits samples, so it gets the time
                                                           # (13,000 → 15,000: joint sync-F1 0.81 → 0.83)
}

SETTINGS = settings_block(dict(globals()))
CONFIG_FIELDS = [f.name for f in fields(Config)]


def main(argv):
    defaults = dict(SETTINGS, **{f: None for f in CONFIG_FIELDS})
    args = parse_cli(defaults, argv)
    if args["stage"] not in STAGE_DEFAULTS:
        raise SystemExit(f"--stage must be one of {sorted(STAGE_DEFAULTS)}, not {args['stage']!r}")
    for k, v in STAGE_DEFAULTS[args["stage"]].items():
        args[k] = v if args[k] is None else args[k]
    overrides = {k: args.pop(k) for k in CONFIG_FIELDS if args[k] is not None}
    run = Run(args, overrides)
    try:
        run.train_ae() if args["stage"] == "ae" else run.train_dit()
    finally:
        if run.ddp:
            dist.destroy_process_group()


# ----------------------------------------------------------------------------- the run
class Run:
    """Device, DDP, config and checkpoints of one training run; `train_ae` / `train_dit` are the loops."""

    def __init__(self, args: dict, overrides: dict):
        self.a, self.overrides = args, overrides
        self.ddp = "RANK" in os.environ  # torchrun sets RANK, WORLD_SIZE, LOCAL_RANK
        cuda = torch.cuda.is_available() if args["device"] == "auto" else args["device"].startswith("cuda")
        if self.ddp:
            dist.init_process_group("nccl" if cuda else "gloo")
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
            self.device = torch.device(f"cuda:{os.environ['LOCAL_RANK']}" if cuda else "cpu")
            if cuda:
                torch.cuda.set_device(self.device)
        else:
            self.rank, self.world = 0, 1
            self.device = torch.device("cuda" if cuda else args["device"] if args["device"] != "auto" else "cpu")
        self.main = self.rank == 0
        torch.manual_seed(args["seed"] + self.rank)  # each rank draws its own noise and timesteps
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: free speed, AE/DiT don't need fp32 mantissas
            torch.backends.cudnn.allow_tf32 = True
        self.autocast = autocast(self.device, args["precision"])
        self.out = args["out_dir"]
        os.makedirs(self.out, exist_ok=True)

    def log(self, *msg):
        if self.main:
            tqdm.write(" ".join(str(m) for m in msg))

    # ---- data
    def dataset(self, cfg: Config, split: str):
        """BounceClick (train seed 0.., held-out seed +1000) or the folder's train / eval windows."""
        if self.a["data"]:
            return VideoFolder(self.a["data"], cfg, split=split, cache_dir=os.path.join(self.out, "cache"))
        size, seed = ((self.a["train_clips"], self.a["seed"]) if split == "train"
                      else (self.a["eval_clips"], self.a["seed"] + 1000))  # disjoint procedural seeds
        return BounceClick(cfg, size=size, seed=seed)

    def batch_indices(self, n: int, step: int) -> np.ndarray:
        """Dataset indices of this rank's batch at `step`: epochs of seeded permutations, sharded by rank.

        A pure function of (seed, step, rank), so a resumed run sees exactly the batches it would have.
        """
        bs = self.a["batch_size"]
        pos = (step * self.world + self.rank) * bs + np.arange(bs)  # positions in the endless epoch stream
        epochs = pos // n
        out = np.empty(bs, dtype=np.int64)
        for e in np.unique(epochs):
            perm = np.random.default_rng([self.a["seed"], int(e)]).permutation(n)
            out[epochs == e] = perm[pos[epochs == e] % n]
        return out

    def loader(self, ds, start_step: int):
        """Endless DataLoader whose batch at step s is `batch_indices(len(ds), s)`."""
        run = self

        class StepBatches(torch.utils.data.Sampler):
            def __iter__(self):
                step = start_step
                while True:
                    yield run.batch_indices(len(ds), step).tolist()
                    step += 1

        # An own generator keeps DataLoader from drawing on the global RNG (exact resume).
        return iter(torch.utils.data.DataLoader(
            ds, batch_sampler=StepBatches(), num_workers=self.a["num_workers"],
            pin_memory=self.device.type == "cuda", generator=torch.Generator(),
            persistent_workers=self.a["num_workers"] > 0))

    # ---- config & checkpoints
    def fitted_config(self, ckpt: dict, path: str, free=()) -> Config:
        """The config a run continues from `ckpt`, refusing one that does not fit what was asked.

        It must come from the same preset, and no explicit override of a field outside `free` may
        contradict it. Fields in `free` (the denoiser's own, when the DiT builds on the AE) take the
        preset's value or the override.
        """
        base, was = Config.from_dict(ckpt["config"]), ckpt["train"]["preset"]
        hint = (f"train the autoencoder for it first, `python train.py --stage ae --preset {self.a['preset']}`"
                f" (with --out_dir to keep {path})")
        if was != self.a["preset"]:
            raise SystemExit(f"{path} was trained at preset {was!r}, but this run asks for {self.a['preset']!r}: {hint}")
        clash = [f"--{k} {v} (checkpoint: {getattr(base, k)})" for k, v in self.overrides.items()
                 if k not in free and getattr(base, k) != v]
        if clash:
            raise SystemExit(f"{path} was trained with another config than this run asks for: {', '.join(clash)}; "
                             + (hint if free else "drop those settings to resume, or start afresh without --resume"))
        requested = get_config(self.a["preset"], **{k: v for k, v in self.overrides.items() if k in free})
        return Config.from_dict({**base.to_dict(), **{k: getattr(requested, k) for k in free}})

    def save(self, name: str, obj: dict):
        if self.main:
            rng = {"torch": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state(self.device)
            save_checkpoint({**obj, "rng": rng, "train": self.a}, os.path.join(self.out, name))

    def restore_rng(self, ckpt: dict):
        # Rank 0's state is saved; other ranks re-derive distinct streams from it.
        torch.set_rng_state(ckpt["rng"]["torch"])
        if self.rank:
            torch.manual_seed(int(torch.randint(2**62, ())) + self.rank)
        if "cuda" in ckpt["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], self.device)

    def wrap(self, model):
        """The module a step calls: compiled if asked, DDP-wrapped under torchrun (gradients all-reduced)."""
        fwd = torch.compile(model) if self.a["compile"] else model
        if self.ddp:
            fwd = DDP(fwd, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return fwd

    def optimizer(self, model):
        return torch.optim.AdamW(model.parameters(), lr=self.a["lr"], betas=(0.9, 0.99),
                                 weight_decay=self.a["weight_decay"], fused=self.device.type == "cuda")

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to 10%."""
        peak, warm, total = self.a["lr"], self.a["warmup_steps"], self.a["max_steps"]
        if step < warm:
            return peak * (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    def step_optimizer(self, opt, params, loss, step) -> float:
        for g in opt.param_groups:
            g["lr"] = self.lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, self.a["grad_clip"])
        opt.step()
        return float(norm)

    def check_ranks_agree(self, model):
        """Under DDP, every rank must hold the same weights at the end; say so (and fail if not)."""
        if not self.ddp:
            return
        flat = torch.cat([p.detach().float().flatten() for p in model.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(self.world)]
        dist.all_gather(gathered, flat)
        worst = max(float((g - gathered[0]).abs().max()) for g in gathered)
        self.log(f"ranks agree: max |weight difference| across {self.world} ranks = {worst:.3g}")
        if worst > 1e-5:
            raise RuntimeError(f"DDP ranks diverged (max |Δw| = {worst})")

    # ------------------------------------------------------------------------- stage 1: MDSA
    def train_ae(self):
        a, path = self.a, os.path.join(self.out, "ae.pt")
        ckpt = load_checkpoint(path, "ae", "python train.py --stage ae") if a["resume"] else None
        cfg = self.fitted_config(ckpt, path) if ckpt else get_config(a["preset"], **self.overrides)
        model = MDSA(cfg).to(self.device)
        opt = self.optimizer(model)
        step = 0
        if ckpt:
            load_weights(model, ckpt["model"], path, "python train.py --stage ae")
            opt.load_state_dict(ckpt["optimizer"])
            step = ckpt["step"]
            self.restore_rng(ckpt)
        fwd = self.wrap(AELoss(model))
        ds, held_out = self.dataset(cfg, "train"), self.dataset(cfg, "eval")
        self.log(f"MDSA {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params | {len(ds)} train clips | "
                 f"{self.device} x{self.world} | batch {a['batch_size']}/process | steps {step}->{a['max_steps']}")
        batches = self.loader(ds, step)
        logf = CsvLog(os.path.join(self.out, "ae_log.csv"), ["step", "loss", "l1_video", "l1_audio", "mse_video",
                                                            "mse_audio", "kl", "lr", "grad_norm", "clips_per_s"], self.main, step)
        bar = tqdm(total=a["max_steps"], initial=step, disable=not self.main, dynamic_ncols=True, desc="ae")
        t0, seen = time.time(), 0
        model.train()
        while step < a["max_steps"]:
            b = next(batches)
            video, audio = b["video"].to(self.device, non_blocking=True), b["audio"].to(self.device, non_blocking=True)
            with self.autocast:
                out = fwd(video, audio)
            gnorm = self.step_optimizer(opt, model.parameters(), out["loss"], step)
            step, seen = step + 1, seen + video.shape[0] * self.world
            bar.update(1)
            bar.set_postfix(loss=f"{out['loss'].item():.4f}", it_s=f"{bar.format_dict['rate'] or 0:.2f}")
            if step % a["log_every"] == 0 or step == a["max_steps"]:
                rate, t0, seen = seen / (time.time() - t0), time.time(), 0
                logf.row(step, *(out[k].item() for k in ("loss", "l1_video", "l1_audio", "mse_video", "mse_audio", "kl")),
                         self.lr_at(step - 1), gnorm, rate)
            if step % a["save_every"] == 0 or step == a["max_steps"]:
                self.save("ae.pt", {"stage": "ae", "config": cfg.to_dict(), "model": model.state_dict(),
                                    "optimizer": opt.state_dict(), "step": step})
            if (a["preview_every"] and step % a["preview_every"] == 0) or step == a["max_steps"]:
                self.preview_ae(model, held_out, cfg, step)
                model.train()
        bar.close()
        self.check_ranks_agree(model)
        self.log(f"saved {path}")

    @torch.no_grad()
    def preview_ae(self, model, held_out, cfg, step):
        """PSNR of held-out reconstructions, and the first one as mp4 (with its inverted sound) + PNG grid."""
        if not self.main:
            return
        model.eval()
        n = min(len(held_out), self.a["eval_clips"])
        items = [held_out[i] for i in range(n)]
        video = torch.stack([it["video"] for it in items]).to(self.device)
        audio = torch.stack([it["audio"] for it in items]).to(self.device)
        with self.autocast:
            rec_v, rec_a = model.decode(model.encode(video, audio))
        rec_v, rec_a = rec_v.float().clamp(-1, 1), rec_a.float().clamp(-1, 1)
        pv, pa = psnr(rec_v, video).item(), psnr(rec_a, audio).item()
        self.log(f"step {step}: held-out PSNR video {pv:.2f} dB, audio frames {pa:.2f} dB ({n} clips)")
        d = os.path.join(self.out, "preview")
        os.makedirs(d, exist_ok=True)
        wave = frames_to_wave(rec_a[:1].cpu(), cfg)[0]
        write_mp4(os.path.join(d, f"ae_{step:06d}.mp4"), rec_v[0].cpu(), wave, cfg)
        k = min(n, 4)  # originals above their reconstructions
        save_grid(os.path.join(d, f"ae_{step:06d}.png"), torch.cat([video[:k], rec_v[:k]]).cpu(),
                  torch.cat([audio[:k], rec_a[:k]]).cpu())

    # ------------------------------------------------------------------------- stage 2: STDiT
    def train_dit(self):
        a, path = self.a, os.path.join(self.out, "dit.pt")
        ae_ck = load_checkpoint(os.path.join(self.out, "ae.pt"), "ae", "python train.py --stage ae")
        ckpt = load_checkpoint(path, "dit", "python train.py --stage dit") if a["resume"] else None
        if ckpt and ckpt["ae_step"] != ae_ck["step"]:
            raise SystemExit(f"{path} was trained on the AE at step {ckpt['ae_step']}, but {self.out}/ae.pt is "
                             f"at step {ae_ck['step']}: start the DiT afresh (drop --resume)")
        ae_cfg = Config.from_dict(ae_ck["config"])
        cfg = (self.fitted_config(ckpt, path, free=()) if ckpt
               else self.fitted_config(ae_ck, os.path.join(self.out, "ae.pt"), free=DIT_FIELDS))
        ae = MDSA(ae_cfg).to(self.device).eval()
        load_weights(ae, ae_ck["model"], os.path.join(self.out, "ae.pt"), "python train.py --stage ae")
        latents, labels = self.cached_latents(ae, cfg, os.path.join(self.out, "ae.pt"))
        # Unit-variance latents (§4): the noise schedule assumes signal of roughly unit scale.
        scale = float(ckpt["latent_scale"]) if ckpt else float(1.0 / latents.std())
        latents = latents * scale

        model = STDiT(cfg).to(self.device)
        ema = copy.deepcopy(model).requires_grad_(False)
        opt = self.optimizer(model)
        step = 0
        if ckpt:
            load_weights(model, ckpt["model"], path, "python train.py --stage dit")
            load_weights(ema, ckpt["ema"], path, "python train.py --stage dit")
            opt.load_state_dict(ckpt["optimizer"])
            step = ckpt["step"]
            self.restore_rng(ckpt)
        fwd = self.wrap(model)
        diffusion = Diffusion.from_config(cfg)
        self.log(f"STDiT {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params | {len(latents)} latents "
                 f"{tuple(latents.shape[1:])} scale {scale:.3f} | {self.device} x{self.world} | "
                 f"batch {a['batch_size']}/process | steps {step}->{a['max_steps']}")
        logf = CsvLog(os.path.join(self.out, "dit_log.csv"), ["step", "loss", "lr", "grad_norm", "clips_per_s"],
                      self.main, step)
        bar = tqdm(total=a["max_steps"], initial=step, disable=not self.main, dynamic_ncols=True, desc="dit")
        latents, labels = latents.to(self.device), labels.to(self.device)
        ema_params, params = list(ema.parameters()), list(model.parameters())
        t0, seen = time.time(), 0
        model.train()
        while step < a["max_steps"]:
            idx = torch.from_numpy(self.batch_indices(len(latents), step)).to(self.device)
            x0, y = latents[idx], (labels[idx] if cfg.num_classes else None)
            with self.autocast:
                loss = diffusion.loss(fwd, x0, y)
            gnorm = self.step_optimizer(opt, params, loss, step)
            with torch.no_grad():  # EMA: ema ← decay·ema + (1−decay)·w, in one fused call
                torch._foreach_lerp_(ema_params, params, 1.0 - a["ema_decay"])
            step, seen = step + 1, seen + x0.shape[0] * self.world
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", it_s=f"{bar.format_dict['rate'] or 0:.2f}")
            if step % a["log_every"] == 0 or step == a["max_steps"]:
                rate, t0, seen = seen / (time.time() - t0), time.time(), 0
                logf.row(step, loss.item(), self.lr_at(step - 1), gnorm, rate)
            if step % a["save_every"] == 0 or step == a["max_steps"]:
                self.save("dit.pt", {"stage": "dit", "config": cfg.to_dict(), "model": model.state_dict(),
                                     "ema": ema.state_dict(), "optimizer": opt.state_dict(), "step": step,
                                     "latent_scale": scale, "ae_step": ae_ck["step"]})
            if (a["preview_every"] and step % a["preview_every"] == 0) or step == a["max_steps"]:
                self.preview_dit(Models(cfg, ae, ema.eval(), diffusion, scale), step)
        bar.close()
        self.check_ranks_agree(model)
        self.log(f"saved {path}")

    def cached_latents(self, ae: MDSA, cfg: Config, ae_file: str):
        """Encode the training set once (MDSA means, §3) and cache N×c×6×L×L on disk next to the checkpoints.

        The cache key covers the AE checkpoint's bytes (a retrained AE never meets stale latents) and
        what decides the clips (data, count, seed, the class count that colours BounceClick's discs),
        but not the denoiser's settings, so DiT runs on one AE share one cache. Rank 0 encodes, the
        others wait and read.
        """
        a = self.a
        with open(ae_file, "rb") as f:
            ae_sha = hashlib.sha256(f.read()).hexdigest()
        key = hashlib.sha1(repr((ae_sha, a["data"], a["train_clips"], a["seed"], cfg.num_classes)).encode()).hexdigest()[:12]
        path = os.path.join(self.out, f"latents_{key}.pt")
        if self.main and not os.path.exists(path):
            ds = self.dataset(cfg, "train")
            dl = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=a["num_workers"],
                                             generator=torch.Generator())
            chunks, labels = [], []
            with torch.no_grad(), self.autocast:
                for b in tqdm(dl, desc="encoding latents", dynamic_ncols=True):
                    planes = ae.encode(b["video"].to(self.device), b["audio"].to(self.device))
                    chunks.append(stack_planes(planes).float().cpu())
                    labels.append(b["label"])
            save_checkpoint({"latents": torch.cat(chunks), "labels": torch.cat(labels)}, path)
        if self.ddp:
            dist.barrier()
        cache = torch.load(path, map_location="cpu", weights_only=True)
        return cache["latents"], cache["labels"].long()

    def preview_dit(self, models: Models, step: int):
        """A few EMA samples (DDIM-50, joint) as mp4 files with sound and a PNG grid."""
        if not self.main:
            return
        n = 4
        with self.autocast:
            video, wave = generate(models, n, steps=50, generator=torch.Generator().manual_seed(0))
        d = os.path.join(self.out, "preview")
        os.makedirs(d, exist_ok=True)
        for i in range(2):
            write_mp4(os.path.join(d, f"dit_{step:06d}_{i}.mp4"), video[i], wave[i], models.cfg)
        save_grid(os.path.join(d, f"dit_{step:06d}.png"), video, wave_to_frames(wave, models.cfg))
        self.log(f"step {step}: wrote {n} EMA samples to {d}")


class AELoss(torch.nn.Module):
    """MDSA.loss as a forward(): DDP syncs gradients only for calls that go through forward()."""

    def __init__(self, ae: MDSA):
        super().__init__()
        self.ae = ae

    def forward(self, video, audio) -> dict:
        return self.ae.loss(video, audio)


class CsvLog:
    """Append-only CSV of training curves; a resumed run keeps the rows before its step."""

    def __init__(self, path, columns, active, start_step):
        self.active = active
        if not active:
            return
        rows = []
        if start_step and os.path.exists(path):
            with open(path) as f:
                rows = [r for r in csv.reader(f)][1:]
            rows = [r for r in rows if int(r[0]) <= start_step]
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(columns)
            w.writerows(rows)
        self.path = path

    def row(self, *values):
        if self.active:
            with open(self.path, "a", newline="") as f:
                csv.writer(f).writerow([f"{v:.6g}" if isinstance(v, float) else v for v in values])


if __name__ == "__main__":
    main(sys.argv[1:])

"""
Sample sounding videos from trained checkpoints (PAPER.md §5).

  python sample.py                                     # 8 joint clips, DDIM-50, into out/samples/
  python sample.py --n 16 --sampler ddpm --steps 250   # ancestral sampling, respaced to 250 steps
  python sample.py --class 2 --cfg 3.0                 # class-conditional with classifier-free guidance
  python sample.py --mode a2v --cond clip.mp4          # zero-shot audio-to-video: keep clip.mp4's sound
  python sample.py --mode v2a --cond clip.mp4          # zero-shot video-to-audio: keep clip.mp4's frames

Writes out/samples/NNN.mp4 (H.264 + AAC), NNN.wav (16-bit) and grid.png (frames over mel frames).
The models are rebuilt from the configs inside out/ae.pt and out/dit.pt (the DiT's EMA weights).
"""
import os
import sys

import torch
from tqdm import tqdm

from config import parse_cli, settings_block
from data import load_clip, save_grid, wave_to_frames, write_mp4, write_wav
from pipeline import autocast, generate, load_models

# ----------------------------------------------------------------------------- settings
out_dir = "out"         # where ae.pt and dit.pt are; samples go to out_dir/samples
n = 8                   # clips to sample
batch_size = 16         # clips per sampling batch
sampler = "ddim"        # "ddim" or "ddpm" (ancestral)
steps = 50              # denoising steps (respaced from the 1000 training steps)
eta = 0.0               # DDIM noise: 0 = deterministic, 1 = DDPM-like
class_label = None      # --class K: a class to sample (None: cycle through the classes)
cfg_scale = 1.0         # --cfg S: classifier-free guidance scale (1 = no guidance)
mode = "joint"          # "joint", "a2v" (given audio -> video) or "v2a" (given video -> audio)
cond = ""               # the clip to condition on in a2v / v2a: any file the folder dataset reads
guidance = 16.0         # a2v / v2a: reconstruction guidance weight (diffusion.Diffusion.sample); 0 = replacement
                        # only, which leaves V2A at chance at tiny (its denoiser barely reads the video)
seed = 0
device = "auto"

SETTINGS = settings_block(dict(globals()))


def main(argv):
    a = parse_cli(SETTINGS, argv, aliases={"class": "class_label", "cfg": "cfg_scale"})
    if a["sampler"] not in ("ddim", "ddpm"):
        raise SystemExit(f"--sampler must be ddim or ddpm, not {a['sampler']!r}")
    if a["mode"] not in ("joint", "a2v", "v2a"):
        raise SystemExit(f"--mode must be joint, a2v or v2a, not {a['mode']!r}")
    if a["mode"] != "joint" and not a["cond"]:
        raise SystemExit(f"--mode {a['mode']} needs --cond FILE, the clip whose "
                         f"{'audio' if a['mode'] == 'a2v' else 'video'} to keep")
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if a["device"] == "auto" else a["device"])
    models = load_models(a["out_dir"], dev)
    cfg = models.cfg
    cond_video = cond_wave = None
    if a["cond"]:
        try:
            cond_video, cond_wave = load_clip(a["cond"], cfg)
        except ValueError as e:
            raise SystemExit(f"--cond: {e}") from None

    out = os.path.join(a["out_dir"], "samples")
    os.makedirs(out, exist_ok=True)
    gen = torch.Generator().manual_seed(a["seed"])
    videos, waves = [], []
    for start in tqdm(range(0, a["n"], a["batch_size"]), desc=f"sampling ({a['mode']}, {a['sampler']}-{a['steps']})"):
        k = min(a["batch_size"], a["n"] - start)
        with autocast(dev):
            video, wave = generate(models, k, mode=a["mode"], cond_video=cond_video, cond_wave=cond_wave,
                                   label=a["class_label"], cfg_scale=a["cfg_scale"], guidance=a["guidance"],
                                   sampler=a["sampler"], steps=a["steps"], eta=a["eta"], generator=gen,
                                   progress=a["n"] <= a["batch_size"])
        for i in range(k):
            write_mp4(os.path.join(out, f"{start + i:03d}.mp4"), video[i], wave[i], cfg)
            write_wav(os.path.join(out, f"{start + i:03d}.wav"), wave[i], cfg.sample_rate)
        videos.append(video)
        waves.append(wave)
    video, wave = torch.cat(videos)[:16], torch.cat(waves)[:16]  # the grid shows at most 16 clips
    save_grid(os.path.join(out, "grid.png"), video, wave_to_frames(wave, cfg))
    print(f"wrote {a['n']} clips ({cfg.frames} frames at {cfg.fps} fps, {cfg.image_size}² px, "
          f"{cfg.clip_samples / cfg.sample_rate:.1f} s of {cfg.sample_rate} Hz audio) and grid.png to {out}")


if __name__ == "__main__":
    main(sys.argv[1:])

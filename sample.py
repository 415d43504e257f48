"""
Sample sounding videos from trained checkpoints (PAPER.md §5).

  python sample.py                                     # 8 joint clips, DPM-Solver++(2M)-50, into out/samples/
  python sample.py --steps 20                          # 20 denoiser calls instead of 50, sync nearly as good
  python sample.py --resample_audio false              # joint in one run of the sampler, no second audio pass
  python sample.py --sampler ddim                      # DDIM-50
  python sample.py --n 16 --sampler ddpm --steps 250   # ancestral sampling, respaced to 250 steps
  python sample.py --class 2 --cfg 3.0                 # class-conditional with classifier-free guidance
  python sample.py --mode a2v --cond clip.mp4          # audio-to-video: keep clip.mp4's sound
  python sample.py --mode v2a --cond clip.mp4          # video-to-audio: keep clip.mp4's frames

Writes out/samples/NNN.mp4 (H.264 + AAC), NNN.wav (16-bit) and grid.png (frames over mel frames).
The models are rebuilt from the configs inside out/ae.pt and out/dit.pt (the DiT's EMA weights).
`python sample.py --help` lists every setting.
"""
import os
import sys

import torch
from tqdm import tqdm

from audio import wave_to_frames
from config import need, parse_cli, settings_of
from data import load_clip, save_grid, write_mp4, write_wav
from diffusion import DEFAULT_STEPS, SAMPLERS
from pipeline import CONDITIONINGS, autocast, generate, load_models, pick_device

# ----------------------------------------------------------------------------- settings
out_dir = "out"         # where ae.pt and dit.pt are; samples go to out_dir/samples
n = 8                   # clips to sample
batch_size = 16         # clips per sampling batch
sampler = "dpm++"       # "dpm++" (DPM-Solver++(2M)), "ddim" or "ddpm" (ancestral)
steps = 0               # denoiser calls per clip; 0 = the sampler's default (dpm++ 50, ddim 50, ddpm 250)
eta = 1.0               # ddim / dpm++ noise: 1 = DDPM-like (better sync, README), 0 = deterministic
grid = "time"           # dpm++ timestep grid: "time" (uniform in t) or "logsnr" (uniform in log-SNR)
class_label = -1        # the class to sample; -1 = cycle through the classes
cfg_scale = 1.0         # classifier-free guidance scale (1 = no guidance)
mode = "joint"          # "joint", "a2v" (given audio -> video) or "v2a" (given video -> audio)
cond = ""               # the clip to condition on in a2v / v2a: any file the folder dataset reads
conditioning = "auto"   # a2v / v2a: "native" (given planes clean), "replace" (re-noised), "auto" (by the model)
xmodal_cfg = 4.0        # cross-modal guidance scale, joint and native a2v / v2a (1 = none; PAPER.md §5)
resample_audio = True   # joint: then re-draw the audio given the finished video, as v2a does (a Gibbs step; README)
guidance = 16.0         # replace a2v / v2a: reconstruction guidance weight (0 = replacement alone)
seed = 0                # the one seed of every random draw: the same seed writes the same clips
device = "auto"         # "auto" (cuda if available, else cpu), "cpu", "cuda" or "cuda:K"

SETTINGS = settings_of(dict(globals()), __file__)


def main(argv):
    a, _ = parse_cli(argv, SETTINGS, doc=__doc__, aliases={"class": "class_label", "cfg": "cfg_scale"})
    need(a["n"] >= 1, f"--n must be at least 1, not {a['n']}")
    need(a["batch_size"] >= 1, f"--batch_size must be at least 1, not {a['batch_size']}")
    need(a["sampler"] in SAMPLERS, f"--sampler must be one of {', '.join(SAMPLERS)}, not {a['sampler']!r}")
    need(a["mode"] in ("joint", "a2v", "v2a"), f"--mode must be joint, a2v or v2a, not {a['mode']!r}")
    need(a["conditioning"] in CONDITIONINGS,
         f"--conditioning must be one of {', '.join(CONDITIONINGS)}, not {a['conditioning']!r}")
    need(a["grid"] in ("time", "logsnr"), f"--grid must be time or logsnr, not {a['grid']!r}")
    need(a["eta"] >= 0 and a["guidance"] >= 0, "--eta and --guidance must be ≥ 0")
    need(a["mode"] == "joint" or a["cond"], f"--mode {a['mode']} needs --cond FILE, the clip whose "
         f"{'audio' if a['mode'] == 'a2v' else 'video'} to keep")
    dev = pick_device(a["device"])
    models = load_models(a["out_dir"], dev)
    cfg = models.cfg
    a["steps"] = a["steps"] or DEFAULT_STEPS[a["sampler"]]
    need(1 <= a["steps"] <= cfg.diffusion_steps,
         f"--steps must be in 1..{cfg.diffusion_steps} (the training timesteps), not {a['steps']}")
    need(a["class_label"] < cfg.num_classes, f"--class {a['class_label']}: the model has "
         f"{cfg.num_classes} classes" + (" (it is unconditional)" if not cfg.num_classes else ""))
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
                                   label=a["class_label"] if a["class_label"] >= 0 else None,
                                   cfg_scale=a["cfg_scale"], sampler=a["sampler"], steps=a["steps"], eta=a["eta"],
                                   grid=a["grid"], conditioning=a["conditioning"], guidance=a["guidance"],
                                   xmodal_cfg=a["xmodal_cfg"], resample_audio=a["resample_audio"], generator=gen,
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

"""
Sample sounding videos from trained checkpoints (PAPER.md §5).

  python sample.py                                     # 8 joint clips with the checkpoint's default sampling
  python sample.py --steps 20                          # 60 denoiser calls a clip instead of 30 (RESULTS.md)
  python sample.py --resample_audio true               # then the audio re-drawn given the video (a V2A pass)
  python sample.py --sampler ddim                      # DDIM-50
  python sample.py --n 16 --sampler ddpm --steps 250   # ancestral sampling, respaced to 250 steps
  python sample.py --class 2 --cfg 3.0                 # class-conditional with classifier-free guidance
  python sample.py --mode a2v --cond clip.mp4          # audio-to-video: keep clip.mp4's sound
  python sample.py --mode v2a --cond clip.mp4          # video-to-audio: keep clip.mp4's frames

Writes out/samples/NNN.mp4 (H.264 + AAC), NNN.wav (16-bit) and grid.png (frames over mel frames).
The models are rebuilt from the configs inside out/ae.pt and out/dit.pt (the DiT's sampled weights).
The sampling settings and their defaults are sampling.Sampling's; "auto" ones follow what the
denoiser was trained for. `python sample.py --help` lists every setting.
"""
import os
import sys

import torch
from tqdm import tqdm

import sampling
from audio import wave_to_frames
from config import fields_of, need, parse_cli, settings_of
from data import load_clip, save_grid, write_mp4, write_wav
from sampling import Sampling
from pipeline import Mode, Precision, autocast, generate, load_models, pick_device

# ----------------------------------------------------------------------------- settings
out_dir = "out"         # where ae.pt and dit.pt are; samples go to out_dir/samples
n = 8                   # clips to sample
batch_size = 16         # clips per sampling batch
mode: Mode = "joint"    # "joint", "a2v" (given audio -> video) or "v2a" (given video -> audio)
cond = ""               # the clip to condition on in a2v / v2a: any file the folder dataset reads
class_label = -1        # the class to sample; -1 = cycle through the classes
seed = 0                # the one seed of every random draw: the same seed writes the same clips
device = "auto"         # "auto" (cuda if available, else cpu), "cpu", "cuda" or "cuda:K"
precision: Precision = "auto"  # "auto": bf16 on GPUs and on CPUs with fast bf16, else fp32; pin it to
                               # reproduce a sample on another kind of machine

SETTINGS = settings_of(globals(), __file__)
SAMPLING = fields_of(Sampling, sampling.__file__)   # --sampler, --steps, ... with their defaults
ALIASES = {"class": "class_label", "cfg": "cfg_scale"}


def main(argv):
    values, chosen = parse_cli(argv, SETTINGS, doc=__doc__, fields=SAMPLING, aliases=ALIASES,
                               fields_title="sampling (sampling.Sampling; auto = as the denoiser was trained):")
    globals().update(values)
    need(n >= 1, f"--n must be at least 1, not {n}")
    need(batch_size >= 1, f"--batch_size must be at least 1, not {batch_size}")
    need(mode == "joint" or cond, f"--mode {mode} needs --cond FILE, the clip whose "
         f"{'audio' if mode == 'a2v' else 'video'} to keep")
    dev = pick_device(device)
    models = load_models(out_dir, dev)
    cfg = models.cfg
    try:
        how = Sampling(**chosen).for_model(models.process)   # resolved once: generate takes it as it is
    except ValueError as e:                          # its message starts with the setting's name
        raise SystemExit(f"--{e}") from None
    need(class_label < cfg.num_classes, f"--class {class_label}: the model has "
         f"{cfg.num_classes} classes" + (" (it is unconditional)" if not cfg.num_classes else ""))
    cond_video = cond_wave = None
    if cond:
        try:
            cond_video, cond_wave = load_clip(cond, cfg)
        except ValueError as e:
            raise SystemExit(f"--cond: {e}") from None

    folder = os.path.join(out_dir, "samples")
    os.makedirs(folder, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    videos, waves = [], []
    for start in tqdm(range(0, n, batch_size), desc=f"sampling ({mode}, {how.sampler}-{how.steps})"):
        k = min(batch_size, n - start)
        with autocast(dev, precision):
            video, wave = generate(models, k, how, mode=mode, cond_video=cond_video, cond_wave=cond_wave,
                                   label=class_label if class_label >= 0 else None, generator=gen,
                                   progress=n <= batch_size)
        for i in range(k):
            write_mp4(os.path.join(folder, f"{start + i:03d}.mp4"), video[i], wave[i], cfg)
            write_wav(os.path.join(folder, f"{start + i:03d}.wav"), wave[i], cfg.sample_rate)
        videos.append(video)
        waves.append(wave)
    video, wave = torch.cat(videos)[:16], torch.cat(waves)[:16]  # the grid shows at most 16 clips
    save_grid(os.path.join(folder, "grid.png"), video, wave_to_frames(wave, cfg))
    print(f"wrote {n} clips ({cfg.frames} frames at {cfg.fps} fps, {cfg.image_size}² px, "
          f"{cfg.clip_samples / cfg.sample_rate:.1f} s of {cfg.sample_rate} Hz audio) and grid.png to {folder}")


if __name__ == "__main__":
    main(sys.argv[1:])

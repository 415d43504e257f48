"""
From checkpoints to clips: the glue that train.py, sample.py, evaluate.py and bench.py share.

  - checkpoints: written to a temporary file and renamed into place (a kill during a save never
    leaves a broken file), read with `torch.load(..., weights_only=True)` (opening a stranger's file
    cannot run code), and refused with a message that says what to run when they do not fit;
  - `load_models`: MDSA + the STDiT's sampled weights (its EMA; at train.py's default, the trained
    weights) + the latent scale, rebuilt from the configs the checkpoints carry;
  - `generate`: PAPER.md §5 end to end — sample the stacked 3D latent (joint, optionally with the
    audio re-drawn given the finished video, or A2V / V2A from a given clip: natively, with the
    given modality's planes clean, or by MM-Diffusion's replacement trick with reconstruction
    guidance [ours]), undo the latent scale, unstack the six planes,
    decode them with MDSA (§3) and invert the mel frames to a waveform (§2);
  - `generate_heldout`: `generate` over held-out dataset items in batches, each A2V / V2A clip
    conditioned on its own item; scoring the clips is the caller's (sync.py, evaluate.py);
  - `pick_device` and the precision switch the scripts share.
"""
import functools
import os
import time
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from autoencoder import MDSA
from audio import frames_to_wave, wave_to_frames
from config import DIT_FIELDS, Config
import diffusion
from sampling import Sampling, sample_latent
from model import VIDEO_PLANES, STDiT, stack_planes, unstack_planes

# ----------------------------------------------------------------------------- device and precision
def pick_device(name: str = "auto") -> torch.device:
    """"auto" (cuda if available, else cpu), "cpu", "cuda" or "cuda:K"; anything this machine does
    not have is refused with a one-line message naming --device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise SystemExit(f"--device {name!r}: not a device name (auto, cpu, cuda or cuda:K)") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise SystemExit(f"--device {name}: this machine has no CUDA device")
        if dev.index is not None and dev.index >= count:
            raise SystemExit(f"--device {name}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    elif dev.type != "cpu":
        raise SystemExit(f"--device {name}: only cpu and cuda are supported")
    return dev


@functools.lru_cache(maxsize=None)
def cpu_bf16_is_fast() -> bool:
    """Whether this CPU multiplies bf16 matrices at least twice as fast as fp32.

    CPUs with AVX512-BF16 or AMX do (BENCHMARKS.md); most laptops do not, and there bf16 would
    only add rounding. Where the CPU lists its features (Linux), they decide: a timing can flip
    on a busy machine, and the choice must not depend on what else runs. Elsewhere, the best of 5
    timed 512² products decides."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        flags = None
    if flags is not None:
        return "amx_bf16" in flags or "avx512_bf16" in flags

    def best(dtype):
        a = torch.randn(512, 512).to(dtype)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            a @ a
            times.append(time.perf_counter() - t0)
        return min(times)
    return best(torch.bfloat16) < 0.5 * best(torch.float32)


Precision = Literal["auto", "bf16", "fp32"]   # the scripts' --precision


def use_bf16(device: torch.device, precision: Precision = "auto") -> bool:
    """precision "auto" → bf16 on GPUs and on CPUs where it is fast; "bf16" or "fp32" force it."""
    if precision not in get_args(Precision):
        raise ValueError(f"precision must be one of {', '.join(get_args(Precision))}, not {precision!r}")
    return precision == "bf16" or (precision == "auto" and (device.type == "cuda" or cpu_bf16_is_fast()))


def autocast(device: torch.device, precision: Precision = "auto"):
    """The mixed-precision context: bf16 autocast where `use_bf16`, else a no-op. bf16 keeps fp32's
    exponent range, so no loss scaling is needed."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(device, precision))


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(obj: dict, path: str) -> None:
    """Atomic save: a crash mid-write leaves the previous checkpoint untouched."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one, never half


# The command that makes each stage's checkpoint: what every message about a missing or unfit one says.
TRAIN_COMMAND = {"ae": "python train.py --stage ae", "dit": "python train.py --stage dit"}


def load_checkpoint(path: str, stage: str) -> dict:
    """Read a checkpoint of `stage` ("ae" or "dit"), or exit with what is wrong and what to run."""
    hint = TRAIN_COMMAND[stage]
    if not os.path.exists(path):
        raise SystemExit(f"no {stage} checkpoint at {path}: run `{hint}` first")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, not a torch file, or pickled code we refuse to run
        raise SystemExit(f"{path} is not a readable ProAV-DiT checkpoint ({type(e).__name__}: {e}); "
                         f"rerun `{hint}`") from None
    if not isinstance(ckpt, dict) or ckpt.get("stage") != stage:
        found = ckpt.get("stage") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise SystemExit(f"{path} holds a {found!r} checkpoint, not {stage!r}: run `{hint}`")
    return ckpt


def load_weights(module: torch.nn.Module, state: dict, path: str, stage: str) -> None:
    """module.load_state_dict(state), or a message naming the file when the weights are from another
    version of the code (renamed, added or removed layers) rather than torch's list of keys."""
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise SystemExit(f"{path} does not fit this version's {type(module).__name__} ({first}); it was "
                         f"probably written by older code: rerun `{TRAIN_COMMAND[stage]}`") from None


def check_dit_fits_ae(dit_ck: dict, ae_ck: dict, dit_path: str, ae_path: str) -> None:
    """Exit unless the denoiser checkpoint was trained on this autoencoder checkpoint: the same
    config outside the denoiser's own fields (DIT_FIELDS), and the same AE step."""
    da, db = Config.from_dict(ae_ck["config"]).to_dict(), Config.from_dict(dit_ck["config"]).to_dict()
    diff = [f"{k}: {da[k]} vs {db[k]}" for k in da if k not in DIT_FIELDS and da[k] != db[k]]
    if dit_ck["ae_step"] != ae_ck["step"]:
        diff.append(f"AE step {ae_ck['step']} vs {dit_ck['ae_step']}")
    if diff:
        raise SystemExit(f"{dit_path} was trained on another autoencoder than {ae_path} ({'; '.join(diff)}): "
                         f"rerun `{TRAIN_COMMAND['dit']}` (without --resume)")


# ----------------------------------------------------------------------------- models
@dataclass
class Models:
    cfg: Config            # the DiT's config (the AE's, plus denoiser fields)
    ae: MDSA
    dit: STDiT             # the checkpoint's "ema" weights, what sampling uses (train.py's --ema_decay; 0 = trained)
    process: diffusion.NoiseProcess  # the forward process: diffusion.DDPM or rectified flow (diffusion.Flow)
    latent_scale: float    # z_model = latent_scale · z_MDSA has unit variance


def load_models(out_dir: str = "out", device="cpu") -> Models:
    """Rebuild MDSA and the EMA STDiT from out_dir/ae.pt and out_dir/dit.pt, checking they belong together."""
    ae_path, dit_path = os.path.join(out_dir, "ae.pt"), os.path.join(out_dir, "dit.pt")
    ae_ck, dit_ck = load_checkpoint(ae_path, "ae"), load_checkpoint(dit_path, "dit")
    check_dit_fits_ae(dit_ck, ae_ck, dit_path, ae_path)
    cfg = Config.from_dict(dit_ck["config"])
    ae, dit = MDSA(Config.from_dict(ae_ck["config"])), STDiT(cfg)
    load_weights(ae, ae_ck["model"], ae_path, "ae")
    load_weights(dit, dit_ck["ema"], dit_path, "dit")
    return Models(cfg, ae.to(device).eval(), dit.to(device).eval(), diffusion.from_config(cfg),
                  float(dit_ck["latent_scale"]))


# ----------------------------------------------------------------------------- generation
Mode = Literal["joint", "a2v", "v2a"]   # both modalities, or one given and the other generated


@torch.no_grad()
def generate(m: Models, n: int, how: Sampling = Sampling(), *, mode: Mode = "joint", cond_video=None,
             cond_wave=None, label=None, generator=None, progress: bool = False):
    """Sample n clips. Returns (video B×3×T×S×S in [-1,1], wave B×N at cfg.sample_rate).

    how        the sampling choices (sampling.Sampling: sampler, steps, guidance scales, ...); the
               ones left None follow what this denoiser was trained for (Sampling.for_model,
               run here unless the caller has resolved `how`).
    mode "a2v": `cond_wave` (N,) or (n, N) is given; its three audio planes are fixed, video is sampled.
    mode "v2a": `cond_video` (3×T×S×S) or (n×3×T×S×S) is given; its video planes are fixed, audio sampled.
    mode "joint" with how.resample_audio: after the joint sample, the audio is drawn again from
               p(audio | video) given the finished video, exactly as v2a does. One Gibbs step: if
               (video, audio) came from p, re-drawing one of them from its conditional leaves the pair
               distributed as p; the model's V2A places clicks far closer to a video's hits than its
               joint sampler does (RESULTS.md). It costs a second run of the sampler.
    generator  the one source of randomness: the same seed gives the same clips.
    A single condition is shared by all n clips; a batch gives each clip its own. The returned clips
    carry the given modality itself, untouched, beside the generated one.
    """
    cfg, dev = m.cfg, next(m.dit.parameters()).device
    how = how if how.resolved else how.for_model(m.process)
    shape = (n, cfg.latent_channels, len(VIDEO_PLANES), cfg.latent_size, cfg.latent_size)
    known = known_mask = given = None
    if mode in ("a2v", "v2a"):
        given = given_clips(cond_wave if mode == "a2v" else cond_video, mode, n)
        known = encode_given(m, given, mode)
        known_mask = (VIDEO_PLANES if mode == "v2a" else ~VIDEO_PLANES).to(dev)
    elif mode != "joint":
        raise ValueError(f"unknown mode {mode!r}: choose one of {', '.join(get_args(Mode))}")
    y = None
    if cfg.num_classes > 0:
        # One label for all clips, one per clip (n labels), or none: every class in turn (a grid shows all).
        y = (torch.as_tensor(label).long().expand(n) if label is not None else torch.arange(n) % cfg.num_classes).to(dev)
    elif label is not None:
        raise ValueError("this model is unconditional (trained with num_classes=0): drop --class")
    run = functools.partial(sample_latent, m.process, m.dit, shape, how, y=y, generator=generator,
                            progress=progress)
    z = run(known=known, known_mask=known_mask)                 # the start noise drawn there, first
    if how.resample_audio and mode == "joint":                  # the Gibbs step: the video planes kept
        z = run(known=z, known_mask=VIDEO_PLANES.to(dev))
    video, audio = m.ae.decode(unstack_planes(z / m.latent_scale))  # undo the unit-variance scaling
    video = given.clone() if mode == "v2a" else video.clamp(-1, 1).float().cpu()
    wave = given.clone() if mode == "a2v" else frames_to_wave(audio.clamp(-1, 1).float().cpu(), cfg)
    return video, wave


def generate_heldout(m: Models, items: list, how: Sampling, mode: Mode, *, generator: torch.Generator,
                     batch_size: int):
    """`generate` over held-out dataset items: yields (video B×3×T×S×S, wave B×N) batches, float32
    on the cpu, of `batch_size` clips (the last one smaller), len(items) clips in order.

    mode "a2v" / "v2a": clip i is conditioned on items[i] (its "wave" / "video", and its "label"
    when the model has classes). mode "joint": the items give only the count; labels cycle
    through the classes as `generate` does. Every draw comes from `generator`, batch after batch,
    so the same generator state, items, batch size and `how` give the same clips."""
    how = how if how.resolved else how.for_model(m.process)
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        stack = lambda key: torch.stack([item[key] for item in chunk])        # noqa: E731
        given = {} if mode == "joint" else dict(cond_video=stack("video"), cond_wave=stack("wave"),
                                                 label=stack("label") if m.cfg.num_classes else None)
        video, wave = generate(m, len(chunk), how, mode=mode, generator=generator, **given)
        yield video.float().cpu(), wave.float().cpu()


def given_clips(given, mode: str, n: int) -> torch.Tensor:
    """The a2v audio (N or n×N) or v2a video (3×T×S×S or n×3×T×S×S) as a batch of n, float32."""
    if given is None:
        raise ValueError(f"mode {mode} needs the {'audio (cond_wave)' if mode == 'a2v' else 'video (cond_video)'}"
                         " to condition on")
    given = torch.as_tensor(given, dtype=torch.float32)
    single = given.dim() == (1 if mode == "a2v" else 4)
    return given[None].expand(n, *given.shape) if single else given


def encode_given(m: Models, given: torch.Tensor, mode: str) -> torch.Tensor:
    """The given modality's three planes in the stacked, scaled latent `n×c×P×L×L`; the other
    modality's planes are zeros (the sampler fills them)."""
    dev = next(m.dit.parameters()).device
    if mode == "a2v":  # the AE encodes audio alone: the video planes come back None
        planes = m.ae.encode(audio=wave_to_frames(given, m.cfg).to(dev))
    else:
        planes = m.ae.encode(video=given.to(dev))
    ref = next(p for p in planes if p is not None)
    return stack_planes([torch.zeros_like(ref) if p is None else p for p in planes]) * m.latent_scale

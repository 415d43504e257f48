"""
What ProAV-DiT costs: parameters, FLOPs, speed, memory (PAPER.md §6).

  python bench.py                        # CPU: FLOPs of both presets, timed steps at tiny
  python bench.py --device cuda          # GPU: bf16 autocast, fused attention, timed steps at both presets,
                                         # then the flash-attention check and the compiled sampling forward
  python bench.py --device cuda --compile true   # the training steps compiled too

Prints markdown tables (and writes them to out_dir/bench.md). No pass/fail: numbers only.
`python bench.py --help` lists the settings.

  - FLOPs are counted with torch.utils.flop_counter.FlopCounterMode on the meta device, so the
    `paper` preset is counted without allocating it. A multiply-add is 2 FLOPs.
  - The efficiency claim of §6 is measured as a ratio in one run: the STDiT over the six projected
    L×L planes against the SAME STDiT (width, depth, heads) over the full 2·T'×L×L latents of both
    modalities (`model.unprojected_stdit`).
  - Achieved FLOP/s of a training step is reported against a matrix product's FLOP/s measured in the
    same process and the same precision as the steps: the model FLOPs utilisation, MFU.
  - Sampling cost per clip is counted for each sampler at its default step count and for
    DPM-Solver++ at FEW_STEPS, beside MM-Diffusion's (MM_DIFFUSION_TFLOPS, counted the same way on
    its released code).
"""
import os
import platform
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from autoencoder import MDSA
from audio import frames_to_wave
from config import PRESETS, get_config, need, parse_cli, settings_of
import diffusion
from sampling import DEFAULT_STEPS, SAMPLERS, Sampling, denoiser_forwards, sample_latent
from model import STDiT, latent_shape, unprojected_stdit, unstack_planes
from pipeline import Precision, autocast, pick_device, use_bf16

# ----------------------------------------------------------------------------- settings
device = "cpu"          # "cpu", "cuda" or "cuda:K" (never "auto": a benchmark says what it ran on)
compile = False         # torch.compile the timed models
precision: Precision = "auto"  # as train.py: "auto" = bf16 on GPUs and on CPUs with fast bf16, else "fp32"
presets = "tiny,paper"  # presets whose FLOPs are counted
timed = ""              # presets whose steps are timed; "" = tiny on CPU, tiny and paper on GPU
ae_batch = 0            # clips per timed AE step; 0 = 8 at tiny, 4 at paper
dit_batch = 0           # clips per timed DiT step; 0 = 32 at tiny, 16 at paper
repeats = 5             # timed repetitions (median reported)
out_dir = "out"         # the markdown tables are written to out_dir/bench.md

SETTINGS = settings_of(globals(), __file__)


# ----------------------------------------------------------------------------- counting
def flops_of(fn) -> int:
    """FLOPs of one call of fn (tensors on the meta device: nothing is computed or allocated)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def count(cfg) -> dict:
    """Parameters and forward GFLOPs per clip of every part at one preset, on the meta device."""
    c, L, T = cfg.latent_channels, cfg.latent_size, cfg.frames
    with torch.device("meta"):
        ae, dit, flat = MDSA(cfg).eval(), STDiT(cfg), unprojected_stdit(cfg)
        video = torch.empty(1, 3, T, cfg.image_size, cfg.image_size)
        audio = torch.empty(1, 1, T, cfg.n_mels, cfg.mel_width)
        planes = tuple(torch.empty(1, c, L, L) for _ in range(6))
        t = torch.zeros(1, dtype=torch.long)
        z6 = torch.empty(1, *latent_shape(cfg, projected=True))
        zf = torch.empty(1, *latent_shape(cfg, projected=False))
        r = {"ae_params": sum(p.numel() for p in ae.parameters()),
             "dit_params": sum(p.numel() for p in dit.parameters()),
             "ae_encode": flops_of(lambda: ae.encode(video, audio)),
             "ae_decode": flops_of(lambda: ae.decode(planes)),
             "dit": flops_of(lambda: dit(z6, t)),
             "dit_unprojected": flops_of(lambda: flat(zf, t)),
             "tokens": z6.shape[2] * (L // cfg.patch) ** 2,
             "tokens_unprojected": zf.shape[2] * (L // cfg.patch) ** 2}
    return r


# MM-Diffusion (Ruan et al. 2023), the open sounding-video model on the same benchmarks, at its
# shipped settings: a 64² base U-Net (16×64² video + 25,600 audio samples) sampled with DPM-Solver in
# 20 steps, 1,328.8 GFLOPs a forward, then a 64→256 super-resolution U-Net sampled with DDIM-25,
# 20,212.6 GFLOPs a forward over 16 frames. Both counted with FlopCounterMode on its released model
# code (BENCHMARKS.md): 20·1,328.8 + 25·20,212.6 GFLOPs = 531.9 TFLOPs per clip.
MM_DIFFUSION_TFLOPS = 531.9


# DPM-Solver++ at 20 steps: the cheap setting (`--steps 20`) whose sync RESULTS.md sets beside DDIM-50's.
FEW_STEPS = 20


def sampler_table(presets) -> str:
    """Denoiser forwards and TFLOPs per clip (the forwards + one decode): first exactly what
    `sample.py` does with no arguments for a model trained at the preset's defaults (joint, then
    A2V / V2A), then each sampler at its default step count and DPM-Solver++ at FEW_STEPS, in one
    unguided run, with cross-modal guidance, and with the joint clip's audio re-drawn; beside
    MM-Diffusion's at `paper`."""
    rows = []
    for p in presets:
        cfg = get_config(p)
        r, process = count(cfg), diffusion.from_config(cfg)
        runs = [("default joint clip", Sampling(), "joint"), ("default a2v/v2a clip", Sampling(), "v2a")]
        for s, k in [(s, DEFAULT_STEPS[s]) for s in SAMPLERS[process.objective]] + [("dpm++", FEW_STEPS)]:
            runs += [(f"{s}-{k}, one unguided run", Sampling(s, k, xmodal_cfg=1.0, resample_audio=False), "joint"),
                     (f"{s}-{k}, A2V/V2A with cross-modal guidance", Sampling(s, k, xmodal_cfg=4.0), "v2a"),
                     (f"{s}-{k}, joint with cross-modal guidance", Sampling(s, k, xmodal_cfg=4.0, resample_audio=False),
                      "joint"),
                     (f"{s}-{k}, the same, then the audio re-drawn", Sampling(s, k, xmodal_cfg=4.0, resample_audio=True),
                      "joint")]
        for label, how, mode in runs:
            forwards = denoiser_forwards(how.for_model(process), mode)
            tflops = (forwards * r["dit"] + r["ae_decode"]) / 1e12
            ratio = f"{MM_DIFFUSION_TFLOPS / tflops:.1f}×" if p == "paper" else ""
            rows.append((p, label, forwards, f"{tflops:.3f}", ratio))
    rows.append(("MM-Diffusion (64² base, DPM-Solver-20 + SR DDIM-25)", "", 45, f"{MM_DIFFUSION_TFLOPS:.1f}", "1.0×"))
    return ("\nDenoiser forwards and TFLOPs per clip (sampling.denoiser_forwards: guidance batches 2 copies\n"
            "for A2V/V2A, 3 for joint sampling; the re-drawn audio is a V2A run after the joint one):\n\n"
            + table(["preset", "sampler", "denoiser forwards", "TFLOPs per clip (+ decode)",
                     "MM-Diffusion ÷ this (paper)"], rows))


# ----------------------------------------------------------------------------- timing
def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def median_time(fn, dev, repeats) -> float:
    fn()  # warm-up: allocator, autotuning, compilation
    sync(dev)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(dev)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def matmul_rate(dev, bf16: bool) -> float:
    """FLOP/s of a large square matrix product in the steps' precision (the MFU denominator)."""
    n, dtype = (8192 if dev.type == "cuda" else 2048), (torch.bfloat16 if bf16 else torch.float32)
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    return 2 * n ** 3 / median_time(lambda: a @ b, dev, 10)


def timed_steps(cfg, dev, peak) -> list:
    """Rows: AE training step, DiT training step, DDIM-50 and DPM-Solver++-20 sampling (with decode
    + Griffin-Lim)."""
    amp = autocast(dev, precision)
    big = cfg.image_size > 64
    ab, db = ae_batch or (4 if big else 8), dit_batch or (16 if big else 32)
    rows = []

    def train_step(model, loss_fn, opt):
        def step():
            with amp:
                loss = loss_fn()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    def measure(name, model, loss_fn, batch):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        step = train_step(model, loss_fn, opt)
        step()  # warm-up before counting (compilation, lazy state)
        with FlopCounterMode(display=False) as fc:  # forward + backward, as actually executed
            step()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sec = median_time(step, dev, repeats)
        mem = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else float("nan")
        rate = fc.get_total_flops() / sec
        rows.append((name, batch, f"{sec * 1e3:.1f} ms", f"{batch / sec:.1f}", f"{rate / 1e12:.3f}",
                     f"{100 * rate / peak:.1f}%", f"{mem:.2f}" if mem == mem else "-"))

    torch.manual_seed(0)
    ae = MDSA(cfg).to(dev).train()
    video = torch.rand(ab, 3, cfg.frames, cfg.image_size, cfg.image_size, device=dev) * 2 - 1
    audio = torch.rand(ab, 1, cfg.frames, cfg.n_mels, cfg.mel_width, device=dev) * 2 - 1
    ae_loss = torch.compile(ae.loss) if compile else ae.loss
    measure("AE train step", ae, lambda: ae_loss(video, audio)["loss"], ab)
    ae.eval()

    dit, process = STDiT(cfg).to(dev).train(), diffusion.from_config(cfg)
    fwd = torch.compile(dit) if compile else dit
    z = torch.randn(db, *latent_shape(cfg), device=dev)
    measure("DiT train step", dit, lambda: process.loss(fwd, z), db)
    dit.eval()

    @torch.no_grad()
    def sample(n, sampler, steps):
        with amp:
            x = sample_latent(process, fwd, (n, *latent_shape(cfg)), Sampling(sampler, steps, xmodal_cfg=1.0))
            v, au = ae.decode(unstack_planes(x))
        return v, frames_to_wave(au.float().clamp(-1, 1).cpu(), cfg)

    for sampler, steps in (("ddim", DEFAULT_STEPS["ddim"]), ("dpm++", FEW_STEPS)):
        for n in (1, db):
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            sec = median_time(lambda: sample(n, sampler, steps), dev, max(1, repeats // 2))
            mem = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else float("nan")
            rows.append((f"sample {sampler}-{steps} + decode + GL", n, f"{sec * 1e3:.0f} ms",
                         f"{n / sec:.2f}", "", "", f"{mem:.2f}" if mem == mem else "-"))
    return rows


@torch.no_grad()
def gpu_sampling_checks(cfg, dev, repeats) -> str:
    """On a GPU: does the STDiT's attention run the flash kernel (forced, the same numbers)? And the
    sampling forward alone compiled: compile time and speed-up of one DPM-Solver++ clip."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    torch.manual_seed(0)
    dit, process = STDiT(cfg).to(dev).eval(), diffusion.from_config(cfg)
    for p in dit.parameters():                       # a trained-looking net: adaLN-Zero starts as the identity
        p.add_(0.02 * torch.randn_like(p))
    shape, amp = (1, *latent_shape(cfg)), autocast(dev, "bf16")
    z, t = torch.randn(shape, device=dev), torch.full((1,), 500, device=dev)
    with amp:
        free = dit(z, t).float()
        try:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                forced = dit(z, t).float()
            flash = f"runs; max |difference| to the default dispatch {(forced - free).abs().max().item():.2e}"
        except RuntimeError as e:
            flash = f"refused: {str(e).splitlines()[0]}"

    def one_clip(model, sampler, steps):
        with amp:
            return sample_latent(process, model, shape, Sampling(sampler, steps, xmodal_cfg=1.0))

    rows = [("flash attention forced (SDPBackend.FLASH_ATTENTION)", flash)]
    for sampler, steps in (("ddim", DEFAULT_STEPS["ddim"]), ("dpm++", FEW_STEPS)):
        rows.append((f"one `paper` clip, {sampler}-{steps}, eager (denoiser only)",
                     f"{median_time(lambda: one_clip(dit, sampler, steps), dev, repeats) * 1e3:.0f} ms"))
    compiled = torch.compile(dit)
    t0 = time.perf_counter()
    one_clip(compiled, "dpm++", FEW_STEPS)           # the first call compiles
    sync(dev)
    rows.append(("compile of the sampling forward (first dpm++ clip)", f"{time.perf_counter() - t0:.1f} s"))
    rows.append((f"one `paper` clip, dpm++-{FEW_STEPS}, compiled",
                 f"{median_time(lambda: one_clip(compiled, 'dpm++', FEW_STEPS), dev, repeats) * 1e3:.0f} ms"))
    return "\nGPU checks at `paper` (bf16 autocast):\n\n" + table(["check", "result"], rows)


def table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(x) for x in r) + " |" for r in rows])


def main(argv):
    globals().update(parse_cli(argv, SETTINGS, doc=__doc__)[0])
    for p in [q for q in (presets + "," + timed).split(",") if q]:
        need(p in PRESETS, f"--presets / --timed: unknown preset {p!r}; choose from {', '.join(PRESETS)}")
    need(repeats >= 1, f"--repeats must be at least 1, not {repeats}")
    need(ae_batch >= 0 and dit_batch >= 0, "--ae_batch and --dit_batch must be ≥ 0 (0 = by preset)")
    need(device != "auto", "--device: name the device to measure (cpu, cuda or cuda:K)")
    dev = pick_device(device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        name = torch.cuda.get_device_name(dev)
    else:
        name = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    bf16 = use_bf16(dev, precision)
    out = [f"Machine: {name}; torch {torch.__version__}; compile={compile}; "
           f"{'bf16 autocast' if bf16 else 'fp32'}"]

    rows = []
    for p in presets.split(","):
        cfg = get_config(p)
        r = count(cfg)
        G = 1e9
        rows.append((p, f"{r['ae_params'] / 1e6:.1f}M", f"{r['dit_params'] / 1e6:.1f}M", f"{r['ae_encode'] / G:.2f}",
                     f"{r['ae_decode'] / G:.2f}", f"{r['tokens']} / {r['tokens_unprojected']}",
                     f"{r['dit'] / G:.2f}", f"{r['dit_unprojected'] / G:.2f}",
                     f"{r['dit_unprojected'] / r['dit']:.2f}×"))
    out.append("\nParameters and forward GFLOPs per clip (FlopCounterMode, meta device):\n")
    out.append(table(["preset", "MDSA params", "STDiT params", "AE encode", "AE decode",
                      "tokens 6-plane / full 3D", "STDiT", "STDiT unprojected", "unprojected ÷ projected"],
                     rows))

    out.append(sampler_table(presets.split(",")))

    peak = matmul_rate(dev, bf16)
    out.append(f"\nMatrix product ({'bf16' if bf16 else 'fp32'} {2048 if dev.type == 'cpu' else 8192}³), same process: "
               f"{peak / 1e12:.3f} TFLOP/s\n")
    for p in (timed or ("tiny,paper" if dev.type == "cuda" else "tiny")).split(","):
        cfg = get_config(p)
        out.append(f"\nTimed at `{p}` (median of {repeats}; FLOPs of forward + backward as executed):\n")
        out.append(table(["what", "batch", "time", "clips/s", "achieved TFLOP/s", "MFU", "peak GiB"],
                         timed_steps(cfg, dev, peak)))
        if dev.type == "cuda" and p == "paper":
            out.append(gpu_sampling_checks(cfg, dev, repeats))
    text = "\n".join(out) + "\n"
    print(text)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "bench.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main(sys.argv[1:])

"""
What ProAV-DiT costs: parameters, FLOPs, speed (PAPER.md §6); with `--memory true`, memory too.

  python bench.py                        # CPU: FLOPs of both presets, timed steps at tiny
  python bench.py --device cuda          # GPU: bf16 autocast, fused attention, timed steps at both presets,
                                         # then the flash-attention check and the compiled sampling forward
  python bench.py --device cuda --compile true   # the training steps compiled too
  python bench.py --memory true          # and the memory tables (memory.py; CPU: ~10 min)

Prints markdown tables (and writes them to out_dir/bench.md). No pass/fail: numbers only.
`python bench.py --help` lists the settings.

  - FLOPs are counted with torch.utils.flop_counter.FlopCounterMode on the meta device, so the
    `paper` preset is counted without allocating it. A multiply-add is 2 FLOPs. On the meta device
    the counter sees a backward pass too, so a training step is counted forward + backward.
  - The efficiency claim of §6 is measured as a ratio in one run: the STDiT over the six projected
    L×L planes against the SAME STDiT (width, depth, heads) over the full 2·T'×L×L latents of both
    modalities (`model.unprojected_stdit`).
  - The default run: the training compute of `train.py --stage ae` then `--stage dit` with the
    stage defaults of recipe.STAGE_DEFAULTS, stage by stage.
  - Achieved FLOP/s of a training step is reported against a matrix product's FLOP/s measured in the
    same process and the same precision as the steps: the model FLOPs utilisation, MFU.
  - Sampling cost per clip is counted for `sample.py`'s default (sampling.Sampling()), for each
    sampler at its default step count and for DPM-Solver++ at COMPARED_STEPS, beside MM-Diffusion's
    (MM_DIFFUSION_TFLOPS, counted the same way on its released code); the timed rows sample as
    `sample.py` does (pipeline.generate), with its defaults and with DDIM-50 (Euler-50 for rectified flow).
"""
import os
import platform
import sys
import time
from collections import Counter

import torch
from torch.utils.flop_counter import FlopCounterMode

import diffusion
from autoencoder import MDSA
from config import PRESETS, get_config, need, parse_cli, settings_of
from memory import AttentionKernel, memory_tables, training_loss
from model import STDiT, latent_shape, unprojected_stdit
from pipeline import Models, Precision, autocast, generate, pick_device, use_bf16
from recipe import STAGE_DEFAULTS, TRAIN_CLIPS, dit_phase, make_optimizer
from sampling import DEFAULT_STEPS, SAMPLERS, Sampling, denoiser_forwards, sample_latent

# ----------------------------------------------------------------------------- settings
device = "cpu"          # "cpu", "cuda" or "cuda:K" (never "auto": a benchmark says what it ran on)
compile = False         # torch.compile the timed models
precision: Precision = "auto"  # as train.py: "auto" = bf16 on GPUs and on CPUs with fast bf16, else "fp32"
presets = "tiny,paper"  # presets whose FLOPs are counted (parameters, sampling, the default run)
timed = ""              # presets whose steps are timed; "" = tiny on CPU, tiny and paper on GPU
ae_batch = 0            # clips per timed AE step; 0 = the stage's batch_size in recipe.STAGE_DEFAULTS, half at paper
dit_batch = 0           # clips per timed DiT step; 0 = the stage's batch_size in recipe.STAGE_DEFAULTS, half at paper
repeats = 5             # timed repetitions (median reported)
out_dir = "out"         # the markdown tables are written to out_dir/bench.md
memory = False          # add the memory tables (memory.py): one training step per stage, preset and batch, with
                        # and without grad_checkpoint, model state, and checkpointing's cost in step time
memory_presets = "tiny,paper"  # presets of the memory tables
memory_batches = ""     # clips per step in the memory table; "" = 1,4,16 on GPU; on CPU 1,2 at tiny, 1 at paper
memory_attention: AttentionKernel = "fused"  # attention kernel of the memory rows: "fused" =
                        # F.scaled_dot_product_attention, as on a GPU (the counts then predict a GPU's);
                        # "as_run" = attention.sdpa's choice (bf16 on a CPU writes the weights out for backward)

SETTINGS = settings_of(globals(), __file__)


# ----------------------------------------------------------------------------- counting
def flops_of(fn) -> int:
    """FLOPs of one call of fn (tensors on the meta device: nothing is computed or allocated)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def count(cfg) -> dict:
    """Parameters and forward FLOPs per clip of every part at one preset, on the meta device."""
    c, L, T = cfg.latent_channels, cfg.latent_size, cfg.frames
    with torch.device("meta"):
        ae, dit, flat = MDSA(cfg).eval(), STDiT(cfg), unprojected_stdit(cfg)
        video = torch.empty(1, 3, T, cfg.image_size, cfg.image_size)
        audio = torch.empty(1, 1, T, cfg.n_mels, cfg.mel_width)
        planes = tuple(torch.empty(1, c, L, L) for _ in range(6))
        t = torch.zeros(1, dtype=torch.long)
        z6 = torch.empty(1, *latent_shape(cfg, projected=True))
        zf = torch.empty(1, *latent_shape(cfg, projected=False))
        return {"ae_params": sum(p.numel() for p in ae.parameters()),
                "dit_params": sum(p.numel() for p in dit.parameters()),
                "ae_encode": flops_of(lambda: ae.encode(video, audio)),
                "ae_decode": flops_of(lambda: ae.decode(planes)),
                "dit": flops_of(lambda: dit(z6, t)),
                "dit_unprojected": flops_of(lambda: flat(zf, t)),
                "tokens": z6.shape[2] * (L // cfg.patch) ** 2,
                "tokens_unprojected": zf.shape[2] * (L // cfg.patch) ** 2}


def count_table(counts) -> str:
    """counts {preset: count(cfg)} as the parameters and per-clip GFLOPs table."""
    G, rows = 1e9, []
    for p, r in counts.items():
        rows.append((p, f"{r['ae_params'] / 1e6:.1f}M", f"{r['dit_params'] / 1e6:.1f}M",
                     f"{r['ae_encode'] / G:.2f}", f"{r['ae_decode'] / G:.2f}",
                     f"{r['tokens']} / {r['tokens_unprojected']}", f"{r['dit'] / G:.2f}",
                     f"{r['dit_unprojected'] / G:.2f}", f"{r['dit_unprojected'] / r['dit']:.2f}×"))
    return ("\nParameters and forward GFLOPs per clip (FlopCounterMode, meta device):\n\n"
            + table(["preset", "MDSA params", "STDiT params", "AE encode", "AE decode", "tokens 6-plane / full 3D",
                     "STDiT", "STDiT unprojected", "unprojected ÷ projected"], rows))


def training_step_flops(stage, cfg, batch, guided=False, shortcut=False) -> int:
    """FLOPs of one training step of `stage` at `batch` clips on the meta device: forward + backward
    (memory.training_loss, grad_checkpoint off; `guided`: a step toward the learned-guidance target;
    `shortcut`: a step of the shortcut phase) and the update of the stage's default optimizer (Muon's
    Newton-Schulz products; AdamW's update has no matrix product)."""
    meta = torch.device("meta")
    with meta:
        model, loss_fn, _ = training_loss(stage, cfg, batch, meta, guided, shortcut)
        opt = make_optimizer(model, STAGE_DEFAULTS[stage]["optimizer"], STAGE_DEFAULTS[stage]["lr"])
        return flops_of(lambda: loss_fn().backward()) + flops_of(opt.step)


def dit_phases(cfg, max_steps) -> dict:
    """{(guided, shortcut): steps} of a DiT stage of `max_steps`, in the order train.py runs them
    (recipe.dit_phase); phases of no steps are left out."""
    return dict(Counter(dit_phase(cfg, step, max_steps) for step in range(max_steps)))


def default_run_table(counts) -> str:
    """The training compute of the default run at each preset: the AE stage (max_steps × one step at
    the stage's batch), the training clips encoded to latents once (TRAIN_CLIPS × one MDSA encode), the
    DiT stage (max_steps × one step at its batch, the config's mixture of noise levels), one row per
    phase of it (`dit_phases`), and the total."""
    names = {(False, False): ("DiT stage", ""), (True, False): ("DiT, guided target", ", + the two no-grad copies"),
             (False, True): ("DiT, shortcut steps", ", a quarter by two no-grad half steps"),
             (True, True): ("DiT, guided + shortcut", ", a quarter by two no-grad half steps, the rest guided")}
    rows = []
    for p, r in counts.items():
        cfg, parts = get_config(p), []
        batch = STAGE_DEFAULTS["ae"]["batch_size"]
        steps = STAGE_DEFAULTS["ae"]["max_steps"]
        parts.append(("AE stage", f"{steps:,} steps × batch {batch}, forward + backward + update", steps,
                      training_step_flops("ae", cfg, batch)))
        parts.append(("latents", f"{TRAIN_CLIPS:,} clips × one MDSA encode", TRAIN_CLIPS, r["ae_encode"]))
        batch = STAGE_DEFAULTS["dit"]["batch_size"]
        for (guided, shortcut), steps in dit_phases(cfg, STAGE_DEFAULTS["dit"]["max_steps"]).items():
            name, extra = names[guided, shortcut]
            parts.append((name, f"{steps:,} steps × batch {batch}, forward + backward + update{extra}", steps,
                          training_step_flops("dit", cfg, batch, guided, shortcut)))
        rows += [(p, name, what, f"{each / 1e9:,.2f}", f"{n * each / 1e12:,.1f}")
                 for name, what, n, each in parts]
        rows.append((p, "**total**", "", "", f"**{sum(n * each for *_, n, each in parts) / 1e12:,.1f}**"))
    return ("\nThe default run's training compute (`train.py --stage ae`, then `--stage dit`, at the preset, with\n"
            "recipe.STAGE_DEFAULTS; FlopCounterMode on the meta device, the optimizers' updates included; not\n"
            "counted: the EMA, the held-out checks and previews, `sample.py`):\n\n"
            + table(["preset", "part", "what", "GFLOP each", "TFLOP"], rows))


# MM-Diffusion (Ruan et al. 2023), the open sounding-video model on the same benchmarks, at its
# shipped settings: a 64² base U-Net (16×64² video + 25,600 audio samples) sampled with DPM-Solver in
# 20 steps, 1,328.8 GFLOPs a forward, then a 64→256 super-resolution U-Net sampled with DDIM-25,
# 20,212.6 GFLOPs a forward over 16 frames. Both counted with FlopCounterMode on its released model
# code (BENCHMARKS.md): 20·1,328.8 + 25·20,212.6 GFLOPs = 531.9 TFLOPs per clip.
MM_DIFFUSION_TFLOPS = 531.9

# DPM-Solver++ at 20 steps (`sample.py --steps 20`): twice the default's steps and denoiser calls, the
# step count RESULTS.md ("Which sampler and how many steps?") sets beside DDIM-50.
COMPARED_STEPS = 20

# Each objective's first-order deterministic solver, the long-stepping row the timed tables set beside
# the default: DDIM for DDPM, Euler for rectified flow (DDIM's step on the flow path).
PLAIN = {"ddpm": "ddim", "flow": "euler"}


def sampler_table(counts) -> str:
    """Denoiser forwards and TFLOPs per clip (the forwards + one decode): first exactly what
    `sample.py` does with no arguments for a model trained at the preset's defaults (joint, then
    A2V / V2A), then each sampler at its default step count and DPM-Solver++ at COMPARED_STEPS, in
    one unguided run, with cross-modal guidance, and with the joint clip's audio re-drawn; beside
    MM-Diffusion's at `paper`."""
    rows = []
    for p, r in counts.items():
        process = diffusion.from_config(get_config(p))
        runs = [("default joint clip", Sampling(), "joint"), ("default a2v/v2a clip", Sampling(), "v2a")]
        runs += [(f"{s}-{DEFAULT_STEPS[s]}, one unguided run",
                  Sampling(s, DEFAULT_STEPS[s], xmodal_cfg=1.0, resample_audio=False), "joint")
                 for s in SAMPLERS[process.objective] if s != "shortcut" or process.shortcut]  # shortcut: taught models
        for k in sorted({COMPARED_STEPS, DEFAULT_STEPS["dpm++"]}):
            if k != DEFAULT_STEPS["dpm++"]:                        # that one is listed above
                runs.append((f"dpm++-{k}, one unguided run",
                             Sampling("dpm++", k, xmodal_cfg=1.0, resample_audio=False), "joint"))
            runs += [(f"dpm++-{k}, A2V/V2A with cross-modal guidance", Sampling("dpm++", k, xmodal_cfg=4.0), "v2a"),
                     (f"dpm++-{k}, joint with cross-modal guidance",
                      Sampling("dpm++", k, xmodal_cfg=4.0, resample_audio=False), "joint"),
                     (f"dpm++-{k}, the same, then the audio re-drawn",
                      Sampling("dpm++", k, xmodal_cfg=4.0, resample_audio=True), "joint")]
        for label, how, mode in runs:
            forwards = denoiser_forwards(process, how.for_model(process), mode)
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


def timed_batch(stage, preset) -> int:
    """Clips per timed step: --ae_batch / --dit_batch, else the stage's batch_size in
    recipe.STAGE_DEFAULTS, halved at `paper` (which then fits an 80 GB GPU)."""
    chosen = {"ae": ae_batch, "dit": dit_batch}[stage]
    return chosen or STAGE_DEFAULTS[stage]["batch_size"] // (2 if preset == "paper" else 1)


def timed_steps(preset, dev, peak) -> list:
    """Rows: the AE and DiT training steps (each with its stage's optimizer from recipe.STAGE_DEFAULTS),
    then sampling as `sample.py` does (pipeline.generate, with decode and Griffin-Lim): its default
    joint clip and V2A clip (sampling.Sampling()), and the PLAIN solver at 50 steps in one unguided run;
    1 clip and a batch."""
    cfg, amp = get_config(preset), autocast(dev, precision)
    ab, db = timed_batch("ae", preset), timed_batch("dit", preset)
    rows = []

    def measure(name, model, loss_fn, batch, stage):
        defaults = STAGE_DEFAULTS[stage]
        opt = make_optimizer(model, defaults["optimizer"], defaults["lr"], fused=dev.type == "cuda",
                             ns_bf16=use_bf16(dev))

        def step():
            with amp:
                loss = loss_fn()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

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
    measure("AE train step", ae, lambda: ae_loss(video, audio)["loss"], ab, "ae")
    ae.eval()

    dit, process = STDiT(cfg).to(dev).train(), diffusion.from_config(cfg)
    fwd = torch.compile(dit) if compile else dit
    z = torch.randn(db, *latent_shape(cfg), device=dev)
    measure("DiT train step", dit, lambda: process.loss(fwd, z), db, "dit")
    dit.eval()

    models = Models(cfg, ae, fwd, process, 1.0)            # latent scale 1: the cost does not depend on it
    given = torch.rand(db, 3, cfg.frames, cfg.image_size, cfg.image_size) * 2 - 1   # V2A's videos, on the cpu
    runs = [("sample.py's default, joint", Sampling(), "joint"), ("sample.py's default, V2A", Sampling(), "v2a"),
            (f"{PLAIN[process.objective]}-50, one unguided run", Sampling(PLAIN[process.objective], 50, xmodal_cfg=1.0),
             "joint")]
    for name, how, mode in runs:
        calls = denoiser_forwards(process, how.for_model(process), mode)
        extra = "encode + " if mode == "v2a" else ""             # V2A encodes the given video first
        for n in (1, db):
            def sample():
                with amp:
                    return generate(models, n, how, mode=mode, cond_video=given[:n] if mode == "v2a" else None)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            sec = median_time(sample, dev, max(1, repeats // 2))
            mem = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else float("nan")
            rows.append((f"{name} ({calls} forwards) + {extra}decode + GL", n, f"{sec * 1e3:.0f} ms",
                         f"{n / sec:.2f}", "", "", f"{mem:.2f}" if mem == mem else "-"))
    return rows


@torch.no_grad()
def gpu_sampling_checks(preset, dev, repeats) -> str:
    """On a GPU: does the STDiT's attention run the flash kernel (forced, the same numbers)? One clip's
    denoiser calls with sample.py's default sampling and with the PLAIN solver at 50 steps, eager; and
    the default's sampling forward compiled: compile time and speed-up."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    torch.manual_seed(0)
    cfg = get_config(preset)
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

    def one_clip(model, how):
        with amp:
            return sample_latent(process, model, shape, how)

    default, plain = Sampling(), Sampling(PLAIN[process.objective], 50, xmodal_cfg=1.0)
    rows = [("flash attention forced (SDPBackend.FLASH_ATTENTION)", flash)]
    for name, how in (("sample.py's default, joint", default), (f"{PLAIN[process.objective]}-50, unguided", plain)):
        rows.append((f"one `{preset}` clip, {name}, eager (denoiser only)",
                     f"{median_time(lambda: one_clip(dit, how), dev, repeats) * 1e3:.0f} ms"))
    compiled = torch.compile(dit)
    t0 = time.perf_counter()
    one_clip(compiled, default)                      # the first call compiles
    sync(dev)
    rows.append(("compile of the sampling forward (first default clip)", f"{time.perf_counter() - t0:.1f} s"))
    rows.append((f"one `{preset}` clip, sample.py's default, compiled",
                 f"{median_time(lambda: one_clip(compiled, default), dev, repeats) * 1e3:.0f} ms"))
    return f"\nGPU checks at `{preset}` (bf16 autocast):\n\n" + table(["check", "result"], rows)


def cpu_name() -> str:
    """The CPU's model name and its bf16 matrix instructions, from /proc/cpuinfo (Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    field = lambda key: next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(key)), "")
    flags = field("flags").split()
    units = [name for flag, name in (("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX")) if flag in flags]
    return f"{field('model name') or platform.machine()} ({', '.join(units) or 'no AVX512-BF16 or AMX'})"


def table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(x) for x in r) + " |" for r in rows])


def preset_list(setting, value) -> list:
    """A comma-separated list of preset names, each checked (one line naming the setting if not)."""
    names = [p.strip() for p in value.split(",") if p.strip()]
    for p in names:
        need(p in PRESETS, f"--{setting}: unknown preset {p!r}; choose from {', '.join(PRESETS)}")
    return names


def main(argv):
    globals().update(parse_cli(argv, SETTINGS, doc=__doc__)[0])
    counted, timed_presets = preset_list("presets", presets), preset_list("timed", timed)
    need(counted, "--presets: name at least one preset (tiny, paper)")
    need(repeats >= 1, f"--repeats must be at least 1, not {repeats}")
    for setting, value in (("ae_batch", ae_batch), ("dit_batch", dit_batch)):
        need(value >= 0, f"--{setting} must be ≥ 0 (0 = the stage's batch), not {value}")
    need(device != "auto", "--device: name the device to measure (cpu, cuda or cuda:K)")
    memory_presets_list = preset_list("memory_presets", memory_presets)
    need(bool(memory_presets_list) or not memory, "--memory_presets: name at least one preset (tiny, paper)")
    need(all(b.strip().isdigit() and int(b) >= 1 for b in memory_batches.split(",")) if memory_batches else True,
         f"--memory_batches: a comma-separated list of batch sizes ≥ 1, not {memory_batches!r}")
    dev = pick_device(device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        name = torch.cuda.get_device_name(dev)
    else:
        name = f"{cpu_name()}, {torch.get_num_threads()} threads"
    bf16 = use_bf16(dev, precision)
    out = [f"Machine: {name}; torch {torch.__version__}; compile={compile}; {'bf16 autocast' if bf16 else 'fp32'}"]

    counts = {p: count(get_config(p)) for p in counted}
    out += [count_table(counts), default_run_table(counts), sampler_table(counts)]

    peak = matmul_rate(dev, bf16)
    size = 2048 if dev.type == "cpu" else 8192
    out.append(f"\nMatrix product ({'bf16' if bf16 else 'fp32'} {size}³), same process: {peak / 1e12:.3f} TFLOP/s\n")
    for p in timed_presets or (["tiny", "paper"] if dev.type == "cuda" else ["tiny"]):
        out.append(f"\nTimed at `{p}` (median of {repeats}; FLOPs of forward + backward as executed):\n")
        out.append(table(["what", "batch", "time", "clips/s", "achieved TFLOP/s", "MFU", "peak GiB"],
                         timed_steps(p, dev, peak)))
        if dev.type == "cuda" and p == "paper":
            out.append(gpu_sampling_checks(p, dev, repeats))
    if memory:
        batches = [int(b) for b in memory_batches.split(",")] if memory_batches else []
        for caption, header, rows in memory_tables(dev, memory_presets_list, batches, precision, memory_attention,
                                                   repeats):
            out.append(f"\n{caption}\n\n{table(header, rows)}\n")
    text = "\n".join(out) + "\n"
    print(text)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "bench.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main(sys.argv[1:])

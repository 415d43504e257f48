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
import contextlib
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Literal

import torch
from torch.utils.flop_counter import FlopCounterMode

from autoencoder import MDSA
from audio import frames_to_wave
from config import PRESETS, get_config, need, parse_cli, settings_of
import attention
import diffusion
import model as stdit_module
from sampling import DEFAULT_STEPS, SAMPLERS, Sampling, denoiser_forwards, sample_latent
from model import STDiT, latent_shape, unprojected_stdit, unstack_planes
from pipeline import Precision, autocast, pick_device, use_bf16
from train import STAGE_DEFAULTS, is_block_matrix, make_optimizer

# ----------------------------------------------------------------------------- settings
MemoryAttention = Literal["fused", "as_run"]  # the attention kernels the memory rows may use
device = "cpu"          # "cpu", "cuda" or "cuda:K" (never "auto": a benchmark says what it ran on)
compile = False         # torch.compile the timed models
precision: Precision = "auto"  # as train.py: "auto" = bf16 on GPUs and on CPUs with fast bf16, else "fp32"
presets = "tiny,paper"  # presets whose FLOPs are counted
timed = ""              # presets whose steps are timed; "" = tiny on CPU, tiny and paper on GPU
ae_batch = 0            # clips per timed AE step; 0 = 8 at tiny, 4 at paper
dit_batch = 0           # clips per timed DiT step; 0 = 32 at tiny, 16 at paper
repeats = 5             # timed repetitions (median reported)
out_dir = "out"         # the markdown tables are written to out_dir/bench.md
memory = False          # add the memory tables: one training step per stage, preset and batch, with and
                        # without grad_checkpoint, and checkpointing's cost in step time (CPU: ~10 min)
memory_presets = "tiny,paper"  # presets of the memory tables
memory_batches = ""     # clips per step in the memory table; "" = 1,4,16 on GPU; on CPU 1,2 at tiny, 1 at paper
memory_attention: MemoryAttention = "fused"  # attention kernel of the memory rows: "fused" =
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
        runs += [(f"{s}-{DEFAULT_STEPS[s]}, one unguided run",
                  Sampling(s, DEFAULT_STEPS[s], xmodal_cfg=1.0, resample_audio=False), "joint")
                 for s in SAMPLERS[process.objective]]
        for k in sorted({FEW_STEPS, DEFAULT_STEPS["dpm++"]}):
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

    def measure(name, model, loss_fn, batch, stage):
        kind = STAGE_DEFAULTS[stage]["optimizer"]  # what train.py steps this stage with
        opt = make_optimizer(model, kind, 1e-4, fused=dev.type == "cuda")
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
    measure("AE train step", ae, lambda: ae_loss(video, audio)["loss"], ab, "ae")
    ae.eval()

    dit, process = STDiT(cfg).to(dev).train(), diffusion.from_config(cfg)
    fwd = torch.compile(dit) if compile else dit
    z = torch.randn(db, *latent_shape(cfg), device=dev)
    measure("DiT train step", dit, lambda: process.loss(fwd, z), db, "dit")
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


# ----------------------------------------------------------------------------- memory
# Autograd nodes that only view or cast a tensor: followed back from a saved tensor to find out
# whether it is autocast's low-precision copy of a weight.
VIEW_OR_CAST = {"ToCopyBackward0", "TBackward0", "TransposeBackward0", "PermuteBackward0", "ViewBackward0",
                "UnsafeViewBackward0", "ExpandBackward0", "UnsqueezeBackward0", "AliasBackward0"}


class SavedForBackward(torch.autograd.graph.saved_tensors_hooks):
    """What autograd keeps for the backward pass during a forward: the distinct storages of every
    tensor an op saves (a storage saved by several ops counts once), without the model's own
    parameters and buffers. Deterministic bookkeeping of "activation memory" on any device.

        with SavedForBackward(model, blocks) as saved:
            loss = loss_fn()
        saved.bytes() → {"total", "weight_copies", "blocks", "max_block"}

    total: all saved bytes; weight_copies: of them, autocast's bf16 copies of the weights (one set
    per step, whatever the batch); blocks: those saved inside `blocks` (tagged by forward hooks);
    max_block: the most one block saved. A block run under checkpoint() saves nothing here, since
    checkpointing's own hooks take its tensors: what stays is each block's input.
    """

    def __init__(self, model, blocks=()):
        super().__init__(self._pack, lambda t: t)
        self.skip = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
        self.params = {id(p) for p in model.parameters()}
        self.blocks, self.where, self.seen, self.handles = list(blocks), None, {}, []

    def __enter__(self):
        for i, block in enumerate(self.blocks):
            self.handles += [block.register_forward_pre_hook(lambda *_, i=i: setattr(self, "where", i)),
                             block.register_forward_hook(lambda *_: setattr(self, "where", None))]
        super().__enter__()
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles = []
        return super().__exit__(*exc)

    def _pack(self, t):
        key = t.untyped_storage().data_ptr()
        if key not in self.skip and key not in self.seen:
            self.seen[key] = ("weight" if self._is_weight_copy(t) else self.where, t.untyped_storage().nbytes())
        return t                                       # the hook only counts: memory is as without it

    def _is_weight_copy(self, t) -> bool:
        fn = t.grad_fn
        while fn is not None and fn.name() in VIEW_OR_CAST:
            fn = fn.next_functions[0][0]
        return fn is not None and id(getattr(fn, "variable", None)) in self.params

    def bytes(self) -> dict:
        per_block, total, weights = [0] * len(self.blocks), 0, 0
        for kind, n in self.seen.values():
            total += n
            if kind == "weight":
                weights += n
            elif kind is not None:
                per_block[kind] += n
        return {"total": total, "weight_copies": weights, "blocks": sum(per_block),
                "max_block": max(per_block, default=0)}


@contextlib.contextmanager
def fused_attention():
    """Inside: every attention call of MDSA and STDiT is F.scaled_dot_product_attention, the fused
    kernel a GPU runs, also where attention.sdpa would write bf16 attention out on a CPU. The
    kernel saves q, k, v, the output and the log-sum-exp for backward, never the n×n weights."""
    fused = lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v)
    was = attention.sdpa, stdit_module.sdpa
    attention.sdpa = stdit_module.sdpa = fused
    try:
        yield
    finally:
        attention.sdpa, stdit_module.sdpa = was


def training_loss(stage, cfg, batch, dev):
    """One stage's training step on seeded random data: (model in train mode, loss_fn() → the scalar
    loss, the blocks grad_checkpoint recomputes). AE: video `B×3×T×S×S`, audio `B×1×T×M×F` in
    [-1, 1]; DiT: latents `B×c×6×L×L`, the training mixture of noise levels."""
    torch.manual_seed(0)
    if stage == "ae":
        model = MDSA(cfg).to(dev).train()
        video = torch.rand(batch, 3, cfg.frames, cfg.image_size, cfg.image_size, device=dev) * 2 - 1
        audio = torch.rand(batch, 1, cfg.frames, cfg.n_mels, cfg.mel_width, device=dev) * 2 - 1
        return model, lambda: model.loss(video, audio)["loss"], [*model.enc_blocks, *model.dec_blocks]
    model, process = STDiT(cfg).to(dev).train(), diffusion.from_config(cfg)
    z = torch.randn(batch, *latent_shape(cfg), device=dev)
    return model, lambda: process.loss(model, z), list(model.blocks)


def _proc_status_bytes(field) -> int:
    """A `VmRSS` / `VmHWM` line of /proc/self/status in bytes (Linux); ru_maxrss elsewhere."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_now(dev) -> int:
    """Bytes in use: the CUDA caching allocator's allocated bytes, or this process's resident set."""
    return torch.cuda.memory_allocated(dev) if dev.type == "cuda" else _proc_status_bytes("VmRSS")


def reset_peak(dev):
    """Start a new peak: CUDA's peak statistics, or the process's peak RSS (VmHWM; Linux ≥ 4.0)."""
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        return
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")                                   # where refused, the peak covers the warm-up step too


def peak_memory(dev) -> int:
    return torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else _proc_status_bytes("VmHWM")


def memory_row(stage, preset, batch, checkpointed, device_name, precision_name, kernel="fused") -> dict:
    """One training step's forward + backward at (stage, preset, batch), after a warm-up step, with
    the fused attention kernel (kernel "fused", see fused_attention) or attention.sdpa's ("as_run").

    → saved-for-backward bytes (SavedForBackward.bytes()), "peak": the device's (CUDA) or process's
    (CPU, resident set) peak during the step over what was in use at its start (model, inputs), which
    includes the gradients the step leaves, "grads": their bytes, "sec": the step's wall time.
    The optimizer step is left out: AdamW's two fp32 moments are counted from the parameters."""
    dev = pick_device(device_name)
    amp = autocast(dev, precision_name)
    model, loss_fn, blocks = training_loss(stage, get_config(preset), batch, dev)
    model.grad_checkpoint = checkpointed

    def step(counter):
        model.zero_grad(set_to_none=True)
        # the kernel stays switched through backward, where checkpointing recomputes the forward
        with fused_attention() if kernel == "fused" else contextlib.nullcontext():
            with counter, amp:
                loss = loss_fn()
            loss.backward()
        sync(dev)

    step(contextlib.nullcontext())                     # warm-up: kernels, allocator, lazy state
    model.zero_grad(set_to_none=True)
    gc.collect()
    base = memory_now(dev)
    reset_peak(dev)
    saved, t0 = SavedForBackward(model, blocks), time.perf_counter()
    step(saved)
    sec = time.perf_counter() - t0
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    return {**saved.bytes(), "peak": peak_memory(dev) - base, "grads": grads, "sec": sec}


def measured_row(args, dev) -> dict:
    """memory_row(*args): on CPU in a fresh Python process, so that its peak resident set is this
    row's alone; glibc is told to map every block ≥ 16 KiB on its own, so freed tensors leave the
    resident set at once. On a GPU in this process (peak statistics reset per step)."""
    if dev.type == "cuda":
        row = memory_row(*args)
        gc.collect()
        torch.cuda.empty_cache()
        return row
    code = f"import json, bench; print(json.dumps(bench.memory_row(*{args!r})))"
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "16384"}
    done = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(os.path.abspath(__file__)),
                          env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"memory row {args} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_batches_of(preset, dev) -> list:
    """--memory_batches, or by default 1,4,16 on a GPU; on a CPU 1,2 at tiny and 1 at paper (the
    paper STDiT's weights and gradients alone take 7.5 GB there)."""
    if memory_batches:
        return [int(b) for b in memory_batches.split(",")]
    return [1, 4, 16] if dev.type == "cuda" else [1, 2] if preset == "tiny" else [1]


def memory_lines(stage, preset, batch, results) -> list:
    """The table rows of one (stage, preset, batch): results {checkpointed: memory_row(...)}, MiB."""
    mib, lines = 2 ** 20, []
    recompute = results[False]["max_block"]            # what a checkpointed step rebuilds at a time
    per_clip = {c: (r["total"] - r["weight_copies"] + (recompute if c else 0)) / batch for c, r in results.items()}
    for c, r in results.items():
        lines.append(({"ae": "AE", "dit": "DiT"}[stage], preset, batch, "on" if c else "off",
                      f"{r['total'] / mib:,.1f}", f"{r['weight_copies'] / mib:,.1f}",
                      f"{recompute / mib:,.1f}" if c else "", f"{per_clip[c] / mib:,.1f}",
                      f"{per_clip[False] / per_clip[c]:.2f}×" if c else "", f"{r['peak'] / mib:,.0f}",
                      f"{r['sec']:.2f} s"))
    return lines


def memory_table(dev, presets) -> str:
    """Rows per stage, preset, batch, grad_checkpoint off and on (memory_row); MiB throughout."""
    # decided once here: each row's fresh process would otherwise time bf16 against fp32 anew, and a
    # busy machine can tip that test (precision "auto") either way
    pinned, rows = ("bf16" if use_bf16(dev, precision) else "fp32"), []
    for p in presets:
        for stage in ("ae", "dit"):
            for b in memory_batches_of(p, dev):
                results = {c: measured_row((stage, p, b, c, str(dev), pinned, memory_attention), dev)
                           for c in (False, True)}
                rows += memory_lines(stage, p, b, results)
    how = ("CUDA max_memory_allocated over memory_allocated at the step's start" if dev.type == "cuda" else
           "peak resident set (VmHWM, a fresh process per row) over the resident set at the step's start")
    return (f"\nMemory of one training step (forward + backward; MiB; {pinned}, {memory_attention} attention).\n"
            "Saved for backward: the distinct tensors autograd keeps (saved_tensors_hooks, without the\n"
            "parameters); one block's: the most one block saves without checkpointing, which a checkpointed\n"
            "step recomputes at a time; activations per clip: saved − bf16 weight copies (+ one block's when\n"
            f"checkpointed), ÷ batch. Measured peak: {how};\n"
            "it counts the gradients too (fp32, the weights' size), which grow as the activations are freed.\n\n"
            + table(["stage", "preset", "batch", "grad_checkpoint", "saved for backward",
                     "of which bf16 weight copies", "one block's", "activations per clip", "less by",
                     "measured peak over start", "step (warm)"], rows))


def model_state_table(presets) -> str:
    """Weights, gradients, optimizer state and the EMA copy of each stage's model, in GB (10⁹ bytes):
    counted from the parameters, fp32 each (4 bytes a number). The optimizer is the stage's default in
    train.py: AdamW keeps two moments a weight, Muon one momentum buffer per block matrix; train.py
    keeps an EMA of the STDiT only."""
    rows = []
    for p in presets:
        cfg = get_config(p)
        with torch.device("meta"):
            models = {"AE": ("ae", MDSA(cfg)), "DiT": ("dit", STDiT(cfg))}
        for name, (stage, model) in models.items():
            named = list(model.named_parameters())
            n = sum(w.numel() for _, w in named)
            muon = sum(w.numel() for k, w in named if is_block_matrix(k, w)) \
                if STAGE_DEFAULTS[stage]["optimizer"] == "muon" else 0
            parts = [4 * n, 4 * n, 8 * (n - muon) + 4 * muon, 4 * n if name == "DiT" else 0]
            rows.append((name, p, STAGE_DEFAULTS[stage]["optimizer"], f"{n / 1e6:.1f}M",
                         *(f"{x / 1e9:.2f}" for x in parts), f"{sum(parts) / 1e9:.2f}"))
    return ("\nModel state in a training step, GB (10⁹ bytes), counted from the parameters (fp32):\n\n"
            + table(["stage", "preset", "optimizer", "parameters", "weights", "gradients", "optimizer state",
                     "EMA", "total"], rows))


def checkpoint_cost(stage, cfg, batch, dev, reps) -> tuple:
    """Median step time (forward + backward) without and with grad_checkpoint, the two timed in
    alternation on one model and one batch so that a machine's load falls on both alike."""
    model, loss_fn, _ = training_loss(stage, cfg, batch, dev)
    amp, times = autocast(dev, precision), {False: [], True: []}

    def step(checkpointed):
        model.grad_checkpoint = checkpointed
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        with amp:
            loss = loss_fn()
        loss.backward()
        sync(dev)
        return time.perf_counter() - t0

    step(False), step(True)                            # warm-up
    for _ in range(reps):
        for checkpointed in (False, True):
            times[checkpointed].append(step(checkpointed))
    return tuple(sorted(t)[len(t) // 2] for t in (times[False], times[True]))


def checkpoint_cost_table(dev, presets) -> str:
    """checkpoint_cost of both stages at tiny (default batches) and at paper (batch 1; the STDiT at
    depth 4 of 28 on a CPU, where the whole one takes most of a minute a step)."""
    rows, cpu = [], dev.type == "cpu"
    for p in presets:
        cfg, big = get_config(p), p == "paper"
        runs = [("AE", "ae", cfg, 1 if big else 8, "")]
        dit_cfg = get_config(p, dit_depth=4) if big and cpu else cfg
        runs.append(("DiT", "dit", dit_cfg, 1 if big else 32, "depth 4 of 28" if dit_cfg is not cfg else ""))
        for name, stage, c, b, note in runs:
            reps = max(1, repeats // 2) if big else repeats
            off, on = checkpoint_cost(stage, c, b, dev, reps)
            rows.append((name, p + (f" ({note})" if note else ""), b, f"{off * 1e3:,.0f} ms", f"{on * 1e3:,.0f} ms",
                         f"{on / off:.2f}×", reps))
    return ("\nStep time (forward + backward) without and with grad_checkpoint, medians, timed in alternation:\n\n"
            + table(["stage", "preset", "batch", "off", "on", "on ÷ off", "repeats each"], rows))


def memory_tables(dev) -> str:
    """The three memory tables of `--memory true`: per-step memory, model state, checkpointing's cost."""
    presets = memory_presets.split(",")
    return (memory_table(dev, presets) + "\n" + model_state_table(presets) + "\n"
            + checkpoint_cost_table(dev, presets))


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
    for p in memory_presets.split(","):
        need(p in PRESETS, f"--memory_presets: unknown preset {p!r}; choose from {', '.join(PRESETS)}")
    need(all(b.strip().isdigit() and int(b) >= 1 for b in memory_batches.split(",")) if memory_batches else True,
         f"--memory_batches: a comma-separated list of batch sizes ≥ 1, not {memory_batches!r}")
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
    if memory:
        out.append(memory_tables(dev))
    text = "\n".join(out) + "\n"
    print(text)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "bench.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main(sys.argv[1:])

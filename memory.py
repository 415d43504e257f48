"""
What a training step holds in memory, and what `grad_checkpoint` saves (PAPER.md §6).

`python bench.py --memory true` prints the three tables built here; `test_memory.py` checks the
count. Every function takes what it measures as arguments (device, presets, batches, precision,
attention kernel): nothing here reads a script's settings.

  SavedForBackward       the bytes autograd keeps for backward: distinct storages, parameters left
                         out, autocast's bf16 weight copies and each block's share counted apart
  training_loss          one stage's training step on seeded random data
  memory_row             one step's saved bytes, measured peak and time at (stage, preset, batch)
  measured_row           memory_row on a CPU in a fresh Python process, so its peak is its own
  memory_table           memory_row per stage, preset and batch, grad_checkpoint off and on
  model_state_table      weights, gradients, optimizer state and EMA, counted from the parameters
  checkpoint_cost_table  step time without and with grad_checkpoint, timed in alternation

Each table is returned as (caption, header, rows) for the caller to print.
"""
import contextlib
import gc
import json
import os
import resource
import subprocess
import sys
import time
from typing import Literal

import torch

import diffusion
from attention import fused_only
from autoencoder import MDSA
from config import get_config
from model import STDiT, latent_shape
from pipeline import autocast, pick_device, use_bf16
from recipe import STAGE_DEFAULTS, muon_params

# The attention kernel of the memory rows: "fused" = F.scaled_dot_product_attention everywhere, as on a
# GPU (attention.fused_only), so the counts predict a GPU's; "as_run" = attention.sdpa's own choice (bf16
# on a CPU writes the weights out and saves them for backward).
AttentionKernel = Literal["fused", "as_run"]
STAGE_NAMES = {"ae": "AE", "dit": "DiT"}

# ----------------------------------------------------------------------------- saved for backward
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


def training_loss(stage, cfg, batch, dev, guided=False, shortcut=False):
    """One stage's training step on seeded random data: (model in train mode, loss_fn() → the scalar
    loss, the blocks grad_checkpoint recomputes). AE: video `B×3×T×S×S`, audio `B×1×T×M×F` in
    [-1, 1]; DiT: latents `B×c×P×L×L`, the training mixture of noise levels, with `guided` the
    guided target of the config's learned guidance scales (its no-grad forward of the copies), with
    `shortcut` the shortcut phase's loss (a quarter of the batch learns a step from two no-grad
    half steps)."""
    torch.manual_seed(0)
    if stage == "ae":
        model = MDSA(cfg).to(dev).train()
        video = torch.rand(batch, 3, cfg.frames, cfg.image_size, cfg.image_size, device=dev) * 2 - 1
        audio = torch.rand(batch, 1, cfg.frames, cfg.n_mels, cfg.mel_width, device=dev) * 2 - 1
        return model, lambda: model.loss(video, audio)["loss"], [*model.enc_blocks, *model.dec_blocks]
    model, process = STDiT(cfg).to(dev).train(), diffusion.from_config(cfg)
    z = torch.randn(batch, *latent_shape(cfg), device=dev)
    scales = process.learned_scales() if guided else {}
    loss = process.shortcut_loss if shortcut else process.loss
    return model, lambda: loss(model, z, **scales), list(model.blocks)


# ----------------------------------------------------------------------------- measured memory
def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


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


def memory_row(stage: str, preset: str, batch: int, checkpointed: bool, device: str, precision: str,
               kernel: AttentionKernel = "fused") -> dict:
    """One training step's forward + backward at (stage, preset, batch), after a warm-up step, with
    attention as `kernel` says (AttentionKernel), autocast as `precision` says ("bf16" or "fp32").

    → saved-for-backward bytes (SavedForBackward.bytes()), "peak": the device's (CUDA) or process's
    (CPU, resident set) peak during the step over what was in use at its start (model, inputs), which
    includes the gradients the step leaves, "grads": their bytes, "sec": the step's wall time.
    The optimizer step is left out: its state is counted from the parameters (model_state_table)."""
    dev = pick_device(device)
    amp = autocast(dev, precision)
    model, loss_fn, blocks = training_loss(stage, get_config(preset), batch, dev)
    model.grad_checkpoint = checkpointed

    def step(counter):
        model.zero_grad(set_to_none=True)
        # the kernel stays switched through backward, where checkpointing recomputes the forward
        with fused_only() if kernel == "fused" else contextlib.nullcontext():
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


def measured_row(args: tuple, dev) -> dict:
    """memory_row(*args): on CPU in a fresh Python process, so that its peak resident set is this
    row's alone; glibc is told to map every block ≥ 16 KiB on its own, so freed tensors leave the
    resident set at once. On a GPU in this process (peak statistics reset per step)."""
    if dev.type == "cuda":
        row = memory_row(*args)
        gc.collect()
        torch.cuda.empty_cache()
        return row
    code = f"import json, memory; print(json.dumps(memory.memory_row(*{args!r})))"
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "16384"}
    done = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(os.path.abspath(__file__)),
                          env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"memory row {args} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def batches_of(preset: str, dev, batches: list) -> list:
    """`batches`, or where empty: 1, 4, 16 on a GPU; on a CPU 1, 2 at tiny and 1 at paper (the paper
    STDiT's weights and gradients alone take 7.5 GB there)."""
    if batches:
        return list(batches)
    return [1, 4, 16] if dev.type == "cuda" else [1, 2] if preset == "tiny" else [1]


def memory_lines(stage, preset, batch, results) -> list:
    """The table rows of one (stage, preset, batch): results {checkpointed: memory_row(...)}, MiB."""
    mib, lines = 2 ** 20, []
    recompute = results[False]["max_block"]            # what a checkpointed step rebuilds at a time
    per_clip = {c: (r["total"] - r["weight_copies"] + (recompute if c else 0)) / batch for c, r in results.items()}
    for c, r in results.items():
        lines.append((STAGE_NAMES[stage], preset, batch, "on" if c else "off",
                      f"{r['total'] / mib:,.1f}", f"{r['weight_copies'] / mib:,.1f}",
                      f"{recompute / mib:,.1f}" if c else "", f"{per_clip[c] / mib:,.1f}",
                      f"{per_clip[False] / per_clip[c]:.2f}×" if c else "", f"{r['peak'] / mib:,.0f}",
                      f"{r['sec']:.2f} s"))
    return lines


def memory_table(dev, presets: list, batches: list, precision: str, kernel: AttentionKernel) -> tuple:
    """memory_row per stage, preset and batch (batches_of), grad_checkpoint off and on; MiB throughout.
    `precision` is resolved once here ("auto" → bf16 or fp32): each row's fresh process would otherwise
    time bf16 against fp32 anew, and a busy machine can tip that test either way."""
    pinned, rows = ("bf16" if use_bf16(dev, precision) else "fp32"), []
    for p in presets:
        for stage in STAGE_NAMES:
            for b in batches_of(p, dev, batches):
                results = {c: measured_row((stage, p, b, c, str(dev), pinned, kernel), dev) for c in (False, True)}
                rows += memory_lines(stage, p, b, results)
    how = ("CUDA max_memory_allocated over memory_allocated at the step's start" if dev.type == "cuda" else
           "peak resident set (VmHWM, a fresh process per row) over the resident set at the step's start")
    caption = (f"Memory of one training step (forward + backward; MiB; {pinned}, {kernel} attention).\n"
               "Saved for backward: the distinct tensors autograd keeps (saved_tensors_hooks, without the\n"
               "parameters); one block's: the most one block saves without checkpointing, which a checkpointed\n"
               "step recomputes at a time; activations per clip: saved − bf16 weight copies (+ one block's when\n"
               f"checkpointed), ÷ batch. Measured peak: {how};\n"
               "it counts the gradients too (fp32, the weights' size), which grow as the activations are freed.")
    header = ["stage", "preset", "batch", "grad_checkpoint", "saved for backward", "of which bf16 weight copies",
              "one block's", "activations per clip", "less by", "measured peak over start", "step (warm)"]
    return caption, header, rows


# ----------------------------------------------------------------------------- counted model state
def model_state_table(presets: list) -> tuple:
    """Weights, gradients, optimizer state and the EMA copy of each stage's model, in GB (10⁹ bytes):
    counted from the parameters on the meta device, fp32 each (4 bytes a number). The optimizer is the
    stage's in recipe.STAGE_DEFAULTS: AdamW keeps two moments a weight, Muon one momentum buffer per
    matrix of recipe.muon_params; train.py keeps an EMA of the STDiT only."""
    rows = []
    for p in presets:
        cfg = get_config(p)
        with torch.device("meta"):
            models = {"ae": MDSA(cfg), "dit": STDiT(cfg)}
        for stage, model in models.items():
            kind = STAGE_DEFAULTS[stage]["optimizer"]
            n = sum(w.numel() for w in model.parameters())
            muon = sum(w.numel() for _, w in muon_params(model)) if kind == "muon" else 0
            parts = [4 * n, 4 * n, 8 * (n - muon) + 4 * muon, 4 * n if stage == "dit" else 0]
            rows.append((STAGE_NAMES[stage], p, kind, f"{n / 1e6:.1f}M", *(f"{x / 1e9:.2f}" for x in parts),
                         f"{sum(parts) / 1e9:.2f}"))
    caption = "Model state in a training step, GB (10⁹ bytes), counted from the parameters (fp32):"
    header = ["stage", "preset", "optimizer", "parameters", "weights", "gradients", "optimizer state", "EMA",
              "total"]
    return caption, header, rows


# ----------------------------------------------------------------------------- checkpointing's time
def checkpoint_cost(stage, cfg, batch, dev, repeats, precision) -> tuple:
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
    for _ in range(repeats):
        for checkpointed in (False, True):
            times[checkpointed].append(step(checkpointed))
    return tuple(sorted(t)[len(t) // 2] for t in (times[False], times[True]))


def checkpoint_cost_table(dev, presets: list, repeats: int, precision: str) -> tuple:
    """checkpoint_cost of both stages: at tiny with each stage's batch of recipe.STAGE_DEFAULTS, at
    paper with batch 1 (on a CPU the STDiT at depth 4 of 28: the whole one takes most of a minute a
    step there)."""
    rows = []
    for p in presets:
        cfg, big = get_config(p), p == "paper"
        for stage in STAGE_NAMES:
            batch = 1 if big else STAGE_DEFAULTS[stage]["batch_size"]
            shallow = big and stage == "dit" and dev.type == "cpu"
            c = get_config(p, dit_depth=4) if shallow else cfg
            reps = max(1, repeats // 2) if big else repeats
            off, on = checkpoint_cost(stage, c, batch, dev, reps, precision)
            rows.append((STAGE_NAMES[stage], p + (f" (depth 4 of {cfg.dit_depth})" if shallow else ""), batch,
                         f"{off * 1e3:,.0f} ms", f"{on * 1e3:,.0f} ms", f"{on / off:.2f}×", reps))
    caption = "Step time (forward + backward) without and with grad_checkpoint, medians, timed in alternation:"
    return caption, ["stage", "preset", "batch", "off", "on", "on ÷ off", "repeats each"], rows


def memory_tables(dev, presets: list, batches: list, precision: str, kernel: AttentionKernel,
                  repeats: int) -> list:
    """The three tables of `bench.py --memory true`, each (caption, header, rows): memory per step,
    model state, checkpointing's cost in step time."""
    return [memory_table(dev, presets, batches, precision, kernel), model_state_table(presets),
            checkpoint_cost_table(dev, presets, repeats, precision)]

"""The main job end to end at a toy size: train.py --stage ae|dit, resume, torchrun DDP, sample.py;
recipe.py's optimizer split; and the settings mechanism all four scripts share (--help, typed values,
one-line errors)."""
import copy
import csv
import os
import subprocess
import sys

import imageio_ffmpeg
import numpy as np
import pytest
import soundfile
import torch

import bench
import evaluate
import recipe
import sample
import train
from autoencoder import MDSA
from config import get_config
from conftest import TOY, TOY_STEPS
from data import BounceClick, load_clip, write_mp4
import diffusion as processes
from model import STDiT
from sampling import Sampling, denoiser_forwards


def weights(path, key="model"):
    return torch.load(path, map_location="cpu", weights_only=True)[key]


def audio_seconds(path) -> float:
    """Length of the audio stream of an mp4, decoded with the ffmpeg imageio-ffmpeg ships."""
    raw = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", path, "-map", "0:a",
                          "-f", "f32le", "-ac", "1", "-ar", "16000", "-"], capture_output=True, check=True).stdout
    return len(raw) / 4 / 16000


@pytest.fixture(scope="session")
def trained(toy_run):
    """AE and DiT, TOY_STEPS steps each, in one out_dir shared by the tests below: conftest's `toy_run`."""
    return toy_run


def test_end_to_end_writes_mp4_with_1_6_s_of_sound(trained):
    sample.main(["--out_dir", trained, "--n", "1", "--sampler", "dpm++", "--steps", "4"])
    sample.main(["--out_dir", trained, "--n", "1", "--steps", "5"])
    mp4 = os.path.join(trained, "samples", "000.mp4")
    assert abs(audio_seconds(mp4) - 1.6) < 0.03
    wave, sr = soundfile.read(os.path.join(trained, "samples", "000.wav"))
    assert sr == 16000 and len(wave) == 25600
    assert os.path.exists(os.path.join(trained, "samples", "grid.png"))
    assert os.path.exists(os.path.join(trained, "ae_log.csv")) and os.path.exists(os.path.join(trained, "dit_log.csv"))
    # the toy run's previews (mp4 with sound + PNG grid, at its last step) and its one sync-check row
    for name in (f"ae_{TOY_STEPS:06d}.mp4", f"ae_{TOY_STEPS:06d}.png", f"dit_{TOY_STEPS:06d}_0.mp4",
                 f"dit_{TOY_STEPS:06d}.png"):
        assert os.path.getsize(os.path.join(trained, "preview", name)) > 0, name
    with open(os.path.join(trained, "dit_sync.csv")) as f:
        assert [r["step"] for r in csv.DictReader(f)] == [str(TOY_STEPS)]


def test_a2v_keeps_the_given_audio(trained, tmp_path):
    cfg = get_config("tiny")
    item = BounceClick(cfg, size=4, seed=123)[0]
    cond = str(tmp_path / "cond.mp4")
    write_mp4(cond, item["video"], item["wave"], cfg)
    sample.main(["--out_dir", trained, "--n", "1", "--steps", "5", "--mode", "a2v", "--cond", cond])
    written, _ = soundfile.read(os.path.join(trained, "samples", "000.wav"), dtype="float32")
    _, given = load_clip(cond, cfg)
    # The 16-bit wav of the given audio: equal up to quantisation.
    assert np.abs(written - given.numpy()).max() < 1e-3


@pytest.mark.parametrize("stage, optimizer", [("ae", "adamw"), ("dit", "adamw"), ("dit", "muon")])
def test_resume_is_exact(trained, tmp_path, stage, optimizer):
    """2N steps in one go == N steps, stop, --resume, N more (warm-up spans all steps, so the LR
    schedule does not depend on max_steps); Muon's momentum travels in the checkpoint as AdamW's moments do."""
    runs = {}
    for name, legs in {"straight": [4], "resumed": [2, 4]}.items():
        out = str(tmp_path / name)
        os.makedirs(out)
        if stage == "dit":  # both runs build on the same trained AE
            os.link(os.path.join(trained, "ae.pt"), os.path.join(out, "ae.pt"))
        for i, steps in enumerate(legs):
            train.main(["--stage", stage, "--max_steps", str(steps), "--out_dir", out, "--warmup_steps", "100",
                        "--save_every", "2", "--optimizer", optimizer] + TOY
                       + (["--resume"] if i else []))
        runs[name] = weights(os.path.join(out, f"{stage}.pt"))
    for k, v in runs["straight"].items():
        assert torch.allclose(v, runs["resumed"][k], atol=1e-6, rtol=0), k


# the recipe: which weights Muon updates, and a torch without Muon
MDSA_BLOCK_MATRICES = [f"{layer}.weight" for layer in (
    "spatial_v.to_qkv", "spatial_v.out", "spatial_a.to_qkv", "spatial_a.out",
    "temporal_v.to_qkv", "temporal_v.out", "temporal_a.to_qkv", "temporal_a.out",
    "gcm.qkv_v", "gcm.qkv_a", "gcm.out_v", "gcm.out_a",
    "biblock.qv_v", "biblock.kv_a", "biblock.out_v", "biblock.out_a",
    "mlp_v.1", "mlp_v.3", "mlp_a.1", "mlp_a.3")]
STDIT_BLOCK_MATRICES = [f"{layer}.weight" for layer in (
    "spatial.qkv", "spatial.out", "temporal.qkv", "temporal.out", "mlp.0", "mlp.2", "modulation.1")]


def test_muon_takes_the_block_matrices_of_both_models():
    """recipe.muon_params picks the 2D weights inside each model's transformer blocks, in parameter
    order: those of MDSA's encoder and decoder blocks (no name of which holds ".blocks."), and for the
    STDiT exactly the weights, in the order, that matching ".blocks." in the name selects, so the DiT
    recipe keeps its numbers. make_optimizer hands those to Muon and every other weight to AdamW."""
    cfg = get_config("tiny")
    ae, dit = MDSA(cfg), STDiT(cfg)
    expected = {
        ae: [f"{blocks}.{i}.{w}" for blocks in ("enc_blocks", "dec_blocks")
             for i in range(getattr(cfg, f"ae_{blocks[:3]}_blocks")) for w in MDSA_BLOCK_MATRICES],
        dit: [f"blocks.{i}.{w}" for i in range(cfg.dit_depth) for w in STDIT_BLOCK_MATRICES],
    }
    assert (len(expected[ae]), len(expected[dit])) == (40, 28)
    assert [n for n, p in dit.named_parameters() if p.ndim == 2 and ".blocks." in f".{n}"] == expected[dit]
    for model, names in expected.items():
        matrices = recipe.muon_params(model)
        assert [n for n, _ in matrices] == names, type(model).__name__
        muon, adamw = recipe.make_optimizer(model, "muon", 1e-3).opts
        assert isinstance(muon, recipe.Muon) and isinstance(adamw, torch.optim.AdamW)
        assert muon.ns_dtype == torch.bfloat16
        assert recipe.make_optimizer(model, "muon", 1e-3, ns_bf16=False).opts[0].ns_dtype == torch.float32
        assert [id(p) for p in muon.param_groups[0]["params"]] == [id(p) for _, p in matrices]
        assert [id(p) for p in adamw.param_groups[0]["params"]] == \
            [id(p) for n, p in model.named_parameters() if n not in names]
        only, = recipe.make_optimizer(model, "adamw", 1e-3).opts
        assert isinstance(only, torch.optim.AdamW)
        assert len(only.param_groups[0]["params"]) == len(list(model.parameters()))
    with pytest.raises(SystemExit, match=r"^--optimizer muon: Linear has no 2D weight matrices in transformer") as done:
        recipe.make_optimizer(torch.nn.Linear(4, 4), "muon", 1e-3)
    assert "\n" not in str(done.value)


def muon_pair(ns_dtype, steps=3):
    """The STDiT's block matrices stepped `steps` times by torch.optim.Muon (at the recipe's settings)
    and by a copy under recipe.Muon, on the same random gradients: (theirs, ours, the start)."""
    torch.manual_seed(0)
    theirs = [p for _, p in recipe.muon_params(STDiT(get_config("tiny")))]
    ours = [p.detach().clone().requires_grad_() for p in theirs]
    start = [p.detach().clone() for p in theirs]
    reference = torch.optim.Muon(theirs, lr=3e-3, momentum=0.95, weight_decay=0.01, nesterov=True,
                                 adjust_lr_fn="match_rms_adamw", ns_steps=recipe.MUON_NS_STEPS)
    optimizer = recipe.Muon(ours, lr=3e-3, weight_decay=0.01, ns_dtype=ns_dtype)
    for _ in range(steps):
        for a, b in zip(theirs, ours):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        reference.step()
        optimizer.step()
    return theirs, ours, start, reference, optimizer


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="this torch has no torch.optim.Muon to compare with")
def test_muon_matches_torch_muon():
    """recipe.Muon in bf16 makes torch.optim.Muon's update bit for bit (the batched Newton-Schulz runs
    the same bf16 products), so a run keeps its numbers; in float32 it agrees to bf16's precision,
    within 3% of each weight's change; and it resumes from torch's state dict."""
    theirs, ours, start, reference, _ = muon_pair(torch.bfloat16)
    assert all(torch.equal(a, b) for a, b in zip(theirs, ours))
    theirs, ours32, start, reference, _ = muon_pair(torch.float32)
    for a, b, w in zip(theirs, ours32, start):
        assert (a - b).abs().max() <= 0.03 * (a - w).abs().max()
    resumed = [p.detach().clone().requires_grad_() for p in theirs]
    optimizer = recipe.Muon(resumed, lr=1.0)
    optimizer.load_state_dict(copy.deepcopy(reference.state_dict()))  # a checkpoint written by torch's Muon
    for a, b in zip(theirs, resumed):
        a.grad = torch.randn_like(a)
        b.grad = a.grad.clone()
    reference.step()
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(theirs, resumed))


def test_orthogonalise_flattens_the_spectrum():
    """Newton-Schulz keeps a matrix's singular vectors and moves its singular values, spread over a
    decade, towards 1: at the recipe's 3 iterations every one lands in (0.3, 1.3), tall or wide,
    one matrix or a stack, in bf16 and float32."""
    torch.manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(2, 96, 32, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(2, 32, 32, dtype=torch.float64))
    sigma = torch.logspace(-1, 0, 32, dtype=torch.float64)
    G = U @ torch.diag_embed(sigma.expand(2, -1)) @ V.mT                  # 2×96×32, tall
    for dtype in (torch.bfloat16, torch.float32):
        for M in (G.float(), G.mT.float()):
            X = recipe.orthogonalise(M, recipe.MUON_NS_STEPS, dtype).double()
            assert X.shape == M.shape and X.dtype == torch.float64
            s = torch.linalg.svdvals(X)
            assert s.min() > 0.3 and s.max() < 1.3, (dtype, s.min(), s.max())
            left = U if M.shape[-2] == 96 else V                            # X's column space is G's
            assert (torch.linalg.matrix_norm(X - left @ (left.mT @ X)) < 0.05 * torch.linalg.matrix_norm(X)).all()


def test_torchrun_ddp_ranks_agree(tmp_path):
    out = str(tmp_path / "ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "train.py", "--stage", "ae", "--max_steps", "2", "--out_dir", out] + TOY
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.dirname(os.path.abspath(__file__)),
                         env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    line = [ln for ln in (run.stdout + run.stderr).splitlines() if "ranks agree" in ln]
    assert line, run.stdout[-2000:]
    assert float(line[0].rsplit("=", 1)[1]) == 0.0
    assert os.path.exists(os.path.join(out, "ae.pt"))


def test_wrong_checkpoints_are_refused_with_what_to_run(trained, tmp_path):
    with pytest.raises(SystemExit, match=r"python train.py --stage ae"):
        train.main(["--stage", "dit", "--out_dir", str(tmp_path / "empty")] + TOY)
    with pytest.raises(SystemExit, match=r"preset 'tiny'.*'paper'.*--stage ae --preset paper"):
        train.main(["--stage", "dit", "--preset", "paper", "--out_dir", trained] + TOY)
    with pytest.raises(SystemExit, match=r"--ae_channels 48"):
        train.main(["--stage", "dit", "--out_dir", trained] + TOY + ["--ae_channels", "48"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "ae.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match=r"not a readable ProAV-DiT checkpoint"):
        train.main(["--stage", "dit", "--out_dir", str(bad)] + TOY)
    with pytest.raises(SystemExit, match=r"unknown setting --max_stepz"):
        train.main(["--stage", "ae", "--max_stepz", "3"])
    # weights written by older code (here: a layer the MDSA head no longer has) name the file
    old = tmp_path / "old"
    old.mkdir()
    ck = torch.load(os.path.join(trained, "ae.pt"), weights_only=True)
    ck["model"]["video.head.99.weight"] = torch.zeros(3)
    torch.save(ck, old / "ae.pt")
    with pytest.raises(SystemExit, match=r"old/ae.pt does not fit this version's MDSA .*video.head.99.weight"):
        train.main(["--stage", "dit", "--out_dir", str(old)] + TOY)


def test_latent_cache_follows_the_autoencoder_not_the_denoiser(trained, tmp_path):
    """Another denoiser setting reuses the cached latents; a retrained AE (same step count, other
    weights) never meets the latents of the old one."""
    out = str(tmp_path)
    os.link(os.path.join(trained, "ae.pt"), os.path.join(out, "ae.pt"))

    def caches():
        return sorted(f for f in os.listdir(out) if f.startswith("latents_"))

    train.main(["--stage", "dit", "--max_steps", "1", "--out_dir", out] + TOY)
    first = caches()
    train.main(["--stage", "dit", "--max_steps", "1", "--out_dir", out, "--cross_plane", "position"]
               + TOY)
    assert caches() == first and len(first) == 1
    os.remove(os.path.join(out, "ae.pt"))
    train.main(["--stage", "ae", "--max_steps", str(TOY_STEPS), "--out_dir", out, "--seed", "1"] + TOY)
    train.main(["--stage", "dit", "--max_steps", "1", "--out_dir", out] + TOY)
    assert len(caches()) == 2


def test_precision_setting():
    from pipeline import use_bf16
    cpu = torch.device("cpu")
    assert use_bf16(cpu, "bf16") and not use_bf16(cpu, "fp32")
    with pytest.raises(ValueError, match="precision"):
        use_bf16(cpu, "fp16")


def test_seed_fixes_every_sampler(trained, tmp_path):
    """The one --seed drives every random draw: the stochastic solver's per-step noise and the re-noised known planes
    of replacement-conditioned V2A too. The same seed writes the same clips, another seed others."""
    cfg = get_config("tiny")
    item = BounceClick(cfg, size=1, seed=77)[0]
    cond = str(tmp_path / "cond.mp4")
    write_mp4(cond, item["video"], item["wave"], cfg)

    def clips(*extra):
        sample.main(["--out_dir", trained, "--n", "2", "--sampler", "dpm++", "--eta", "1", "--steps", "10", *extra])
        return [soundfile.read(os.path.join(trained, "samples", f"00{i}.wav"))[0] for i in range(2)]

    for extra in ([], ["--mode", "v2a", "--cond", cond, "--conditioning", "replace"],
                  ["--mode", "v2a", "--cond", cond, "--conditioning", "native", "--xmodal_cfg", "2"]):
        first, again, other = clips("--seed", "3", *extra), clips("--seed", "3", *extra), clips("--seed", "4", *extra)
        assert all(np.array_equal(a, b) for a, b in zip(first, again)), extra
        assert not any(np.array_equal(a, b) for a, b in zip(first, other)), extra


def test_resample_audio_keeps_the_joint_video_and_redraws_its_sound(trained):
    """The Gibbs step after joint sampling: the joint stage draws first from the one generator, so
    the same seed gives the same video latent with or without it (its planes are kept exactly; the
    decoded frames differ only by the decoder's cross-modal updates, which see the new audio), and
    the audio is drawn again, given that video."""
    from pipeline import generate, load_models
    m = load_models(trained)
    draw = lambda redo: generate(m, 2, Sampling(sampler="dpm++", steps=4, eta=1.0, xmodal_cfg=2.0, resample_audio=redo),
                                 generator=torch.Generator().manual_seed(5))
    (video, wave), (video_again, wave_again) = draw(False), draw(True)
    assert (video - video_again).abs().max() < 1e-3                 # another video would differ by ~1
    assert (wave - wave_again).abs().max() > 0.1 * wave.abs().max()


@pytest.mark.parametrize("script", [train, sample, evaluate, bench])
def test_every_script_answers_help(script, capsys):
    with pytest.raises(SystemExit) as done:
        script.main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    table = text[text.index("settings ("):].splitlines()            # below the script's docstring
    spelled = {"class_label": "class", "cfg_scale": "cfg"}
    shown = {**script.SETTINGS, **getattr(script, "SAMPLING", {})}  # sample.py and evaluate.py list Sampling's too
    for name, setting in shown.items():
        line = next((ln for ln in table if ln.strip().startswith(f"--{spelled.get(name, name)} ")), None)
        assert line is not None and setting.help and setting.help[:30] in line, name
        if setting.choices:                                # the allowed values, declared once, are listed
            assert f"[{' | '.join(map(str, setting.choices))}]" in line, name
    if script is train:                                    # every Config field too, with its comment
        assert "--mse_weight" in text and "--mix_clean" in text and "[linear | cosine]" in text
    if script in (sample, evaluate):
        assert "[dpm++ | ddim | ddpm | euler | shortcut]" in text and "--resample_audio" in text


@pytest.mark.parametrize("argv, message", [
    (["--stage", "ae", "--max_steps", "1.5"], "--max_steps takes an int, not '1.5'"),
    (["--stage", "ae", "--mt_scales", "1,x"], "--mt_scales takes comma-separated ints"),
    (["--stage", "ae", "--mt_scales", "3"], "MT-SelfAttn scale 3 does not divide"),
    (["--stage", "vae"], "--stage must be one of ae, dit"),
    (["--stage", "ae", "--device", "cuda:7"], "--device cuda:7"),
    (["--stage", "ae", "--device", "tpu"], "--device"),
    (["--stage", "ae", "--batch_size", "-1"], "--batch_size must be at least 1"),
    (["--stage", "dit", "--sync_every", "-2"], "--sync_every must be ≥ 0, or -1 for none"),
])
def test_train_bad_values_are_one_line(argv, message, tmp_path):
    with pytest.raises(SystemExit) as done:
        train.main(argv + ["--out_dir", str(tmp_path), "--max_steps", "1"] if "--max_steps" not in argv
                   else argv + ["--out_dir", str(tmp_path)])
    assert message in str(done.value) and "\n" not in str(done.value)


@pytest.mark.parametrize("argv, message", [
    (["--n", "0"], "--n must be at least 1"),
    (["--steps", "-1"], "--steps must be in 1..1000"),
    (["--sampler", "ddim"], "--sampler must be one of"),   # a DDPM sampler for a flow model
    (["--class", "2"], "--class 2"),
    (["--mode", "v2a"], "--mode v2a needs --cond"),
    (["--device", "cuda:1"], "--device cuda:1"),
])
def test_sample_bad_values_are_one_line(trained, argv, message):
    with pytest.raises(SystemExit) as done:
        sample.main(["--out_dir", trained] + argv)
    assert message in str(done.value) and "\n" not in str(done.value)


def test_checkpoints_from_before_per_modality_levels_still_sample(trained, tmp_path):
    """A config without the mixture fields is a denoiser trained at equal levels only: it loads,
    and samples as it was trained: no cross-modal guidance, no audio re-draw, A2V / V2A by replacement."""
    from pipeline import load_models
    for stage in ("ae", "dit"):
        ck = torch.load(os.path.join(trained, f"{stage}.pt"), weights_only=True)
        for field in ("mix_equal", "mix_independent", "mix_clean", "learned_guidance", "shortcut_steps"):  # all later
            del ck["config"][field]
        for weights in ("model", "ema"):                              # and the step-size input of shortcut steps
            if weights in ck and stage == "dit":
                ck[weights] = {k: v for k, v in ck[weights].items() if not k.startswith("step_embed.")}
        torch.save(ck, tmp_path / f"{stage}.pt")
    models = load_models(str(tmp_path))
    assert (models.cfg.mix_equal, models.cfg.mix_independent, models.cfg.mix_clean) == (1.0, 0.0, 0.0)
    assert models.process.mix == (1.0, 0.0, 0.0)
    how = Sampling().for_model(models.process)
    assert (how.conditioning, how.xmodal_cfg, how.resample_audio) == ("replace", 1.0, False)
    how = Sampling().for_model(processes.from_config(get_config("tiny", learned_guidance=1.0)))
    assert (how.conditioning, how.xmodal_cfg, how.resample_audio, how.steps) == ("native", 4.0, False, 10)
    how = Sampling().for_model(processes.from_config(get_config("tiny")))   # guidance in the weights
    assert (how.conditioning, how.xmodal_cfg, how.resample_audio, how.steps) == ("native", 1.0, False, 10)
    sample.main(["--out_dir", str(tmp_path), "--n", "1", "--steps", "3", "--mode", "v2a", "--cond", _clip(tmp_path)])
    assert os.path.exists(tmp_path / "samples" / "000.wav")


def test_sampling_defaults_follow_the_checkpoint(trained, tmp_path):
    """A denoiser trained at equal levels only samples by default exactly as with cross-modal
    guidance switched off (the same seed writes the same files), and switching guidance on changes them."""
    out = str(tmp_path)
    os.link(os.path.join(trained, "ae.pt"), os.path.join(out, "ae.pt"))
    train.main(["--stage", "dit", "--max_steps", "1", "--out_dir", out,
                "--mix_equal", "1", "--mix_independent", "0", "--mix_clean", "0", "--learned_guidance", "1"] + TOY)

    def clips(*extra):
        sample.main(["--out_dir", out, "--n", "2", "--steps", "3", *extra])
        return [soundfile.read(os.path.join(out, "samples", f"00{i}.wav"))[0] for i in range(2)]

    default, plain = clips(), clips("--xmodal_cfg", "1")
    assert all(np.array_equal(a, b) for a, b in zip(default, plain))
    assert not any(np.array_equal(a, b) for a, b in zip(default, clips("--xmodal_cfg", "4")))


def test_denoiser_forwards_counts_what_generate_runs(trained):
    """bench.py's cost per clip (sampling.denoiser_forwards) is the number of clips generate sends
    through the STDiT, for the default joint clip, native and replaced A2V / V2A, one plain run."""
    from pipeline import generate, load_models
    m, item = load_models(trained), BounceClick(get_config("tiny"), size=1, seed=5)[0]
    rows, forward = [], m.dit.forward
    m.dit.forward = lambda x, t, y=None: rows.append(len(x)) or forward(x, t, y)
    for how, mode in ((Sampling(steps=3), "joint"), (Sampling(steps=3), "v2a"),
                      (Sampling(steps=3, conditioning="replace", guidance=0.0), "a2v"),
                      (Sampling("euler", 4, xmodal_cfg=1.0, resample_audio=False), "joint"),
                      (Sampling(steps=4, guide_above=0.5), "joint"), (Sampling(steps=4, guide_above=0.5), "a2v")):
        rows.clear()
        generate(m, 2, how, mode=mode, cond_video=item["video"], cond_wave=item["wave"],
                 generator=torch.Generator().manual_seed(0))
        assert sum(rows) == 2 * denoiser_forwards(m.process, how.for_model(m.process), mode), (how, mode)


def test_sync_check_during_training_agrees_with_evaluate(trained, tmp_path):
    """train.py's held-out sync check (dit_sync.csv) gives evaluate.py's figures for the same
    checkpoint, clips, sampler and seed."""
    out = str(tmp_path)
    os.link(os.path.join(trained, "ae.pt"), os.path.join(out, "ae.pt"))
    train.main(["--stage", "dit", "--max_steps", "2", "--out_dir", out] + TOY
               + ["--sync_every", "1", "--sync_clips", "4", "--sync_steps", "3"])
    with open(os.path.join(out, "dit_sync.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["1", "2"] and float(rows[1]["seconds"]) > float(rows[0]["seconds"]) >= 0
    results = evaluate.main(["--out_dir", out, "--what", "gen,a2v,v2a", "--n", "4", "--batch_size", "4",
                             "--steps", "3", "--seed", "0", "--report", "false"])
    for part, column in (("gen", "joint_f1"), ("a2v", "a2v_f1"), ("v2a", "v2a_f1")):
        f1 = results[part]["sync"]["generated"]["f1"]
        assert (rows[1][column] == "") if f1 is None else float(rows[1][column]) == pytest.approx(f1, abs=1e-5), part


def _clip(folder) -> str:
    cfg = get_config("tiny")
    item = BounceClick(cfg, size=1, seed=5)[0]
    path = str(folder / "cond.mp4")
    write_mp4(path, item["video"], item["wave"], cfg)
    return path

"""Tests for evaluate.py: the command line end to end on toy checkpoints made by train.py, and on a
folder of mp4 files (the metrics themselves are tested in test_metrics.py)."""
import json
import math
import os
import subprocess
import sys
import warnings

import pytest
import torch

import evaluate as ev
from config import get_config
from conftest import TOY_STEPS
from metrics import file_sha256
from test_metrics import TinyVideoNet, unfit_network_files

# ---------------------------------------------------------------------------------------------
# the CLI end to end: a toy out_dir made by train.py, and a folder of mp4 files
# ---------------------------------------------------------------------------------------------
PARTS = ("ae", "gen", "a2v", "v2a", "xmodal", "fvd")


class TinyAudioNet(torch.nn.Module):
    def forward(self, x):                                    # B×N waveform -> B×16 band energies
        return x.reshape(x.shape[0], 16, -1).pow(2).mean(-1).sqrt()


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """Stand-in TorchScript feature networks: {"video": path, "audio": path}."""
    d = tmp_path_factory.mktemp("nets")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(TinyVideoNet()), str(d / "i3d.pt"))
        torch.jit.save(torch.jit.script(TinyAudioNet()), str(d / "audio.pt"))
    return {"video": str(d / "i3d.pt"), "audio": str(d / "audio.pt")}


@pytest.fixture(scope="session")
def toy_out(toy_run):
    """ae.pt and dit.pt from train.py, TOY_STEPS steps each, at a toy size: conftest's `toy_run`."""
    return toy_run


@pytest.fixture(scope="module")
def toy_eval(toy_out, nets):
    """Every part on the toy checkpoints: n = 3, DPM-Solver++ with 2 steps (the default sampler at
    --steps 2), a stand-in I3D and no audio network."""
    returned = ev.main(["--out_dir", toy_out, "--n", "3", "--steps", "2", "--i3d", nets["video"]])
    with open(f"{toy_out}/eval.json") as f:
        results = json.load(f)
    assert results == json.loads(json.dumps(returned))         # the JSON holds what main returned
    return results


def test_cli_protocol(toy_eval, toy_out, nets):
    p = toy_eval["protocol"]
    assert set(toy_eval) == {"protocol", *PARTS} and p["parts"] == list(PARTS)
    assert (p["n"], p["fvd_n"], p["frames"], p["fps"], p["resolution"], p["sample_rate"]) == (3, 3, 16, 10, 32, 16000)
    assert "seed 1000" in p["split"] and p["sync_tolerance_ms"] == 100.0
    for stage in ("ae", "dit"):
        ck = p["checkpoints"][stage]
        assert ck["step"] == TOY_STEPS and ck["reason"] is None and ck["sha256"] == file_sha256(f"{toy_out}/{stage}.pt")
    g = p["generation"]
    assert (g["source"], g["sampler"], g["steps"], g["eta"]) == ("sampled", "dpm++", 2, 1.0)
    assert p["networks"]["video"]["sha256"] == file_sha256(nets["video"])
    assert p["networks"]["audio"]["sha256"] is None and "--audio_net" in p["networks"]["audio"]["reason"]


def test_cli_sync_parts_stand_beside_real_and_shuffled(toy_eval):
    for part in ("ae", "gen", "a2v", "v2a"):
        r = toy_eval[part]
        assert r["reason"] is None and r["n_clips"] == 3
        sync = r["sync"]
        assert sync["real"]["f1"] == 1.0 and sync["real"]["n_clips"] == 3      # the ceiling
        assert sync["shuffled"]["f1"] < sync["real"]["f1"]                        # chance
    ae = toy_eval["ae"]
    assert all(isinstance(ae[k], float) for k in ("psnr_video_db", "psnr_audio_frames_db", "lsd_db"))
    # the projection alone (real video + inverted real mel frames) keeps the events: the ceiling
    # that a reconstruction can reach, and a check that the LSD is measured against the right wave
    assert ae["sync"]["projection_only"]["f1"] >= 0.9 and ae["lsd_projection_only_db"] < ae["lsd_db"]
    assert set(toy_eval["gen"]["one_disc_frames"]) == {"generated", "generated_shuffled", "real", "shuffled"}
    # zero-shot pairs the generated modality with the GIVEN one: the given side's events are the real ones
    real = toy_eval["a2v"]["sync"]["real"]
    assert toy_eval["a2v"]["sync"]["generated"]["n_audio_events"] == real["n_audio_events"]
    assert toy_eval["v2a"]["sync"]["generated"]["n_video_events"] == real["n_video_events"]


def test_cli_fvd_values_and_missing_network(toy_eval, nets):
    fvd = toy_eval["fvd"]
    for name in ("fvd", "kvd"):
        e = fvd[name]
        assert e["reason"] is None and math.isfinite(e["value"])
        assert (e["protocol"]["n_real"], e["protocol"]["n_generated"]) == (3, 3)
        assert e["protocol"]["network_sha256"] == file_sha256(nets["video"])
    assert fvd["fvd"]["value"] > 0                         # untrained samples are far from real clips
    assert fvd["fad"]["value"] is None and "--audio_net" in fvd["fad"]["reason"]   # null, never 0
    assert fvd["n_requested"] == 3 and "2048" in fvd["note"]


def test_cli_xmodal_part(toy_eval):
    # ε-MSE per modality, matched and shuffled partners, 10/30/50/70% of the way to pure noise (the
    # default rectified flow's t itself; DDPM's would be steps 100, 300, 500, 700 of 1,000); the toy
    # denoiser is barely trained, so only the layout and the range are checked here (the default
    # run's figures are in the README).
    r = toy_eval["xmodal"]
    assert r["reason"] is None and r["n_clips"] == 3 and r["timesteps"] == pytest.approx([0.1, 0.3, 0.5, 0.7])
    assert set(r["eps_mse"]) == {"audio_matched", "audio_shuffled", "video_matched", "video_shuffled"}
    for per_t in r["eps_mse"].values():
        assert len(per_t) == 4 and all(0 < v < 10 for v in per_t)
    # the toy denoiser trained with one modality clean: the same probe with the partner clean at t = 0
    assert set(r["eps_mse_partner_clean"]) == set(r["eps_mse"])
    for who in ("audio", "video"):
        assert len(r["partner_clean_matched_over_shuffled"][who]) == 4
        assert r["matched_over_shuffled"][who][0] == r["eps_mse"][f"{who}_matched"][0] / r["eps_mse"][f"{who}_shuffled"][0]


def test_cli_summary_prints_every_part(toy_eval, capsys):
    text = ev.summary(toy_eval)
    for label in ("real pairs (ceiling)", "shuffled real pairs (chance)", "ae: reconstructions",
                  "gen: generated", "a2v: generated", "v2a: generated", "PSNR video", "fad: null", "xmodal:"):
        assert label in text


def test_cli_samples_folder_of_real_clips_is_in_sync(tmp_path, nets):
    """Real held-out clips written as mp4 and scored as "generated": F1 ≈ 1 validates the whole
    read-back path (H.264 + AAC, load_clip, detectors). No checkpoints: the rest is null + reason."""
    from data import BounceClick, write_mp4
    cfg = get_config("tiny")
    ds = BounceClick(cfg, size=4, seed=1000)                  # the held-out clips the CLI scores as real
    folder = tmp_path / "samples"
    folder.mkdir()
    for i in range(4):
        write_mp4(str(folder / f"{i:03d}.mp4"), ds[i]["video"], ds[i]["wave"], cfg)
    out = tmp_path / "none" / "eval.json"
    r = ev.main(["--samples", str(folder), "--out_dir", str(tmp_path / "none"), "--n", "4",
                 "--i3d", nets["video"], "--audio_net", nets["audio"]])
    gen = r["gen"]["sync"]["generated"]
    print("mp4 read-back:", gen)
    assert gen["f1"] >= 0.99 and gen["pitch_agreement"] == 1.0 and gen["median_abs_offset_ms"] < 10
    assert r["gen"]["one_disc_frames"]["generated"] == 1.0
    assert r["gen"]["sync"]["generated_shuffled"]["f1"] < 0.99
    for part in ("ae", "a2v", "v2a"):                          # load_models asks for ae.pt first
        assert r[part]["value"] is None and "python train.py --stage ae" in r[part]["reason"]
    assert r["protocol"]["generation"] == {"source": str(folder), "files": 4}
    assert "ae.pt" in r["protocol"]["checkpoints"]["ae"]["reason"]
    # FVD / FAD from the folder alone; mp4 coding moves the features a little, not a lot
    assert all(math.isfinite(r["fvd"][k]["value"]) for k in ("fvd", "kvd", "fad"))
    assert json.loads(out.read_text())["gen"]["n_clips"] == 4


def test_cli_without_dit_runs_ae_and_gives_reasons(toy_out, tmp_path):
    os.link(os.path.join(toy_out, "ae.pt"), tmp_path / "ae.pt")
    r = ev.main(["--out_dir", str(tmp_path), "--n", "2", "--batch_size", "2"])
    assert r["ae"]["reason"] is None and r["ae"]["sync"]["real"]["f1"] == 1.0     # from ae.pt alone
    for part in ("gen", "a2v", "v2a"):
        assert r[part]["value"] is None and "dit.pt" in r[part]["reason"] and "--stage dit" in r[part]["reason"]
    for name in ("fvd", "kvd", "fad"):
        assert r["fvd"][name]["value"] is None and r["fvd"][name]["reason"]
    assert r["protocol"]["checkpoints"]["dit"]["reason"] and r["protocol"]["checkpoints"]["ae"]["step"] == TOY_STEPS
    assert os.path.exists(tmp_path / "eval.json")


def test_cli_data_folder_scores_ae_and_fvd_not_sync(toy_out, tmp_path, nets):
    """--data FOLDER: the autoencoder and FVD run on its eval split; sync needs BounceClick."""
    from data import BounceClick, write_mp4
    cfg = get_config("tiny")
    ds = BounceClick(cfg, size=2, seed=7)
    (tmp_path / "clips").mkdir()
    for i in range(2):
        write_mp4(str(tmp_path / "clips" / f"{i}.mp4"), ds[i]["video"], ds[i]["wave"], cfg)
    out = tmp_path / "run"
    os.makedirs(out)
    for stage in ("ae", "dit"):
        os.link(os.path.join(toy_out, f"{stage}.pt"), out / f"{stage}.pt")
    r = ev.main(["--out_dir", str(out), "--data", str(tmp_path / "clips"), "--n", "2", "--steps", "2",
                 "--what", "ae,gen,fvd", "--i3d", nets["video"]])
    assert r["ae"]["n_clips"] == 2 and r["ae"]["sync"] is None and "BounceClick" in r["ae"]["sync_reason"]
    assert r["gen"]["value"] is None and "BounceClick" in r["gen"]["reason"]
    assert r["fvd"]["fvd"]["protocol"]["n_real"] == 2 and str(tmp_path / "clips") in r["protocol"]["split"]
    assert "a2v" not in r and r["protocol"]["parts"] == ["ae", "gen", "fvd"]


def test_cli_bad_settings(tmp_path):
    with pytest.raises(SystemExit, match="unknown part"):
        ev.main(["--what", "ae,fid", "--out_dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="at least 2"):
        ev.main(["--n", "1", "--out_dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="--fvd_n must be 0"):
        ev.main(["--fvd_n", "1", "--out_dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="--samples"):
        ev.main(["--samples", str(tmp_path / "nope"), "--out_dir", str(tmp_path)])


# ---------------------------------------------------------------------------------------------
# feature networks that do not fit: one line, before any clip is generated
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def unfit(tmp_path_factory):
    """{case: path}: a text file, a scripted Linear(3, 2) and a network returning B×16×k (test_metrics)."""
    return unfit_network_files(tmp_path_factory.mktemp("unfit"))


# (flag, case, what the line says was expected)
UNFIT_CASES = [("--i3d", "text", "neither a TorchScript file (torch.jit.save) nor a torch.export archive"),
               ("--i3d", "input", "fails on the input it is given, B×3×T×224×224 float in [-1, 1], RGB "
                                  "(here 2×3×16×224×224)"),
               ("--audio_net", "input", "fails on the input it is given, B×N float waveform (here 2×25600)"),
               ("--audio_net", "output", "must return B×D features (here 2×D), got 2×16×1600")]


@pytest.mark.parametrize("flag, case, expected", UNFIT_CASES)
def test_cli_unfit_network_stops_before_any_clip(toy_out, unfit, tmp_path, monkeypatch, flag, case, expected):
    """With checkpoints that could generate, a network file that does not fit stops the run with
    one line naming the flag and the file, before any clip is generated and before anything is written."""
    def no_clips(*args, **kwargs):
        raise AssertionError("a clip was generated before the feature networks were checked")
    monkeypatch.setattr(ev, "generate", no_clips)
    monkeypatch.setattr(ev, "generate_heldout", no_clips)
    for stage in ("ae", "dit"):
        os.link(os.path.join(toy_out, f"{stage}.pt"), tmp_path / f"{stage}.pt")
    with pytest.raises(SystemExit) as e:
        ev.main(["--out_dir", str(tmp_path), "--n", "2", "--steps", "2", flag, unfit[case]])
    line = str(e.value)
    assert line.startswith(f"{flag} {unfit[case]}: ") and expected in line and "\n" not in line
    assert e.value.__cause__ is None and (e.value.__context__ is None or e.value.__suppress_context__)
    assert sorted(os.listdir(tmp_path)) == ["ae.pt", "dit.pt"]          # no eval.json, no report


def test_cli_unfit_network_under_python_O(unfit, tmp_path):
    """`python -O` drops asserts: the output check is none, and the terminal shows one line, no traceback."""
    run = subprocess.run([sys.executable, "-O", "evaluate.py", "--out_dir", str(tmp_path), "--what", "fvd",
                          "--i3d", unfit["output"]], cwd=os.path.dirname(os.path.abspath(ev.__file__)),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.strip() == (f"--i3d {unfit['output']}: the network must return B×D features (here 2×D), "
                                  f"got 2×16×150528")

"""Tests for evaluate.py: the §7 distribution metrics (closed forms, a stand-in TorchScript network)
and the command line end to end on toy checkpoints made by train.py."""
import json
import math
import os
import warnings

import numpy as np
import pytest
import torch

import evaluate as ev
import train
from config import get_config

# ---------------------------------------------------------------------------------------------
# Fréchet and kernel distances: closed forms
# ---------------------------------------------------------------------------------------------
def test_frechet_closed_forms():
    gen = torch.Generator().manual_seed(0)
    d, n = 8, 20000
    a = torch.randn(n, d, generator=gen, dtype=torch.float64)
    a = a - a.mean(0)                                      # so that scaling a moves only Σ
    b = torch.randn(n, d, generator=gen, dtype=torch.float64)
    mu, s = torch.linspace(-1, 1, d, dtype=torch.float64), 2.0
    trace = float(torch.cov(a.T).trace())
    # exact, on transformed copies of one sample: a shift moves only the means, a scale only Σ
    assert abs(ev.frechet_distance(a, a)) < 1e-8
    assert abs(ev.frechet_distance(a, a + mu) - float(mu.pow(2).sum())) < 1e-8
    assert abs(ev.frechet_distance(a, s * a) - (1 - s) ** 2 * trace) < 1e-8
    # independent samples: N(0,I) vs N(μ,I) -> ‖μ‖², N(0,I) vs N(0,s²I) -> d(1-s)², up to sampling
    # error (the cross term 2μ·δ of the means has std ≈ 2‖μ‖·√(2/n) ≈ 0.04 here)
    assert abs(ev.frechet_distance(a, b + mu) - float(mu.pow(2).sum())) < 0.15
    assert abs(ev.frechet_distance(a, s * b) - d * (1 - s) ** 2) < 0.15
    # rank-deficient covariance (fewer samples than dimensions) must not produce NaN
    assert math.isfinite(ev.frechet_distance(a[:5].numpy(), b[:5].numpy() @ np.ones((d, d))))


def test_kernel_distance():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(400, 6, generator=gen), torch.randn(400, 6, generator=gen)
    same = ev.kernel_distance(a, b)
    assert abs(same) < 0.05                                  # unbiased: ≈ 0, may be < 0
    shifted = ev.kernel_distance(a, b + 1.0)
    assert shifted > 10 * max(abs(same), 1e-3)
    subsets = ev.kernel_distance(a, b + 1.0, subset_size=100, num_subsets=20)   # the KID recipe
    assert abs(subsets - shifted) / shifted < 0.3


# ---------------------------------------------------------------------------------------------
# FeatureNet: a stand-in TorchScript network, missing files, null results
# ---------------------------------------------------------------------------------------------
class TinyVideoNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(3, 8, kernel_size=(1, 8, 8), stride=(1, 8, 8))

    def forward(self, x):                                    # B×3×T×224×224 -> B×8
        return self.conv(x).mean(dim=(2, 3, 4))


@pytest.fixture
def tiny_net_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tiny_i3d.pt"
    with warnings.catch_warnings():                          # torch ≥ 2.10 flags TorchScript deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(TinyVideoNet()), str(path))
    return path


def test_feature_net_video(tiny_net_file):
    net = ev.FeatureNet(tiny_net_file, "video")
    assert len(net.sha256) == 64 and net.sha256 == ev.file_sha256(tiny_net_file)
    clips = [torch.rand(3, 4, 16, 16) * 2 - 1 for _ in range(6)]
    feats = net.embed(clips, batch_size=4)
    assert feats.shape == (6, 8) and feats.dtype == torch.float64
    assert abs(ev.frechet_distance(feats, feats)) < 1e-8


def test_feature_net_exported_pt2(tmp_path):
    path = tmp_path / "tiny_i3d.pt2"
    torch.export.save(torch.export.export(TinyVideoNet(), (torch.zeros(2, 3, 4, 224, 224),)), str(path))
    feats = ev.FeatureNet(path, "video")(torch.zeros(2, 3, 4, 16, 16))
    assert feats.shape == (2, 8)


def test_feature_net_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="--i3d PATH"):
        ev.FeatureNet(tmp_path / "nope.pt", "video")
    with pytest.raises(FileNotFoundError, match="--audio_net PATH"):
        ev.FeatureNet(None, "audio")


def test_distribution_metrics_json(tiny_net_file, tmp_path):
    """The function the command line runs: both sets read once, every loaded network fed."""
    cfg = get_config("tiny")
    video = torch.rand(6, 3, 4, 16, 16) * 2 - 1
    batches = lambda: [(video[:4], torch.zeros(4, 100)), (video[4:], torch.zeros(2, 100))]
    missing = ev.distribution_metrics(ev.load_networks({"video": str(tmp_path / "nope.pt"), "audio": None}),
                                      batches(), batches(), cfg, "test")
    assert set(missing) == {"fvd", "kvd", "fad"}
    for name in ("fvd", "kvd"):
        assert missing[name]["value"] is None and "--i3d" in missing[name]["reason"]
    assert missing["fad"]["value"] is None and "--audio_net" in missing["fad"]["reason"]
    nets = ev.load_networks({"video": str(tiny_net_file)})
    ok = ev.distribution_metrics(nets, batches(), batches(), cfg, "test split")
    assert abs(ok["fvd"]["value"]) < 1e-6 and ok["fvd"]["reason"] is None
    proto = ok["fvd"]["protocol"]
    assert proto["network_sha256"] == ev.file_sha256(tiny_net_file) and proto["n_real"] == 6
    assert (proto["frames"], proto["fps"], proto["resolution"], proto["sample_rate"]) == (16, 10, 32, 16000)
    assert json.loads(json.dumps(ok))["kvd"]["value"] == ok["kvd"]["value"]
    far = ev.distribution_metrics(nets, batches(), [(torch.full_like(video, 0.9), torch.zeros(6, 100))], cfg, "test")
    assert far["fvd"]["value"] > 1e-3 and far["fvd"]["protocol"]["n_generated"] == 6
    no_set = ev.distribution_metrics(nets, batches(), batches(), cfg, "test", reason="no dit.pt")
    assert no_set["fvd"]["value"] is None and no_set["fvd"]["reason"] == "no dit.pt"


# ---------------------------------------------------------------------------------------------
# the CLI end to end: a toy out_dir made by train.py, and a folder of mp4 files
# ---------------------------------------------------------------------------------------------
TOY = ["--ae_channels", "32", "--dit_width", "64", "--dit_depth", "2", "--batch_size", "2",
       "--train_clips", "8", "--eval_clips", "2", "--log_every", "1", "--preview_every", "0"]
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


@pytest.fixture(scope="module")
def toy_out(tmp_path_factory):
    """ae.pt and dit.pt from train.py, two steps each, at a toy size."""
    out = str(tmp_path_factory.mktemp("toy"))
    train.main(["--stage", "ae", "--max_steps", "2", "--out_dir", out] + TOY)
    train.main(["--stage", "dit", "--max_steps", "2", "--out_dir", out] + TOY)
    return out


@pytest.fixture(scope="module")
def toy_eval(toy_out, nets):
    """Every part on the toy checkpoints: n = 3, DDIM-2, a stand-in I3D and no audio network."""
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
        assert ck["step"] == 2 and ck["reason"] is None and ck["sha256"] == ev.file_sha256(f"{toy_out}/{stage}.pt")
    g = p["generation"]
    assert (g["source"], g["sampler"], g["steps"], g["eta"]) == ("sampled", "ddim", 2, 0.0)
    assert p["networks"]["video"]["sha256"] == ev.file_sha256(nets["video"])
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
        assert e["protocol"]["network_sha256"] == ev.file_sha256(nets["video"])
    assert fvd["fvd"]["value"] > 0                         # untrained samples are far from real clips
    assert fvd["fad"]["value"] is None and "--audio_net" in fvd["fad"]["reason"]   # null, never 0
    assert fvd["n_requested"] == 3 and "2048" in fvd["note"]


def test_cli_xmodal_part(toy_eval):
    # ε-MSE per modality, matched and shuffled partners, at 10/30/50/70% of the T steps; the toy
    # denoiser is barely trained, so only the layout and the range are checked here (the default
    # run's figures are in the README).
    r = toy_eval["xmodal"]
    assert r["reason"] is None and r["n_clips"] == 3 and r["timesteps"] == [100, 300, 500, 700]
    assert set(r["eps_mse"]) == {"audio_matched", "audio_shuffled", "video_matched", "video_shuffled"}
    for per_t in r["eps_mse"].values():
        assert len(per_t) == 4 and all(0 < v < 10 for v in per_t)


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
    assert r["protocol"]["checkpoints"]["dit"]["reason"] and r["protocol"]["checkpoints"]["ae"]["step"] == 2
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
    with pytest.raises(SystemExit, match="--samples"):
        ev.main(["--samples", str(tmp_path / "nope"), "--out_dir", str(tmp_path)])

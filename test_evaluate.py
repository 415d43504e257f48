"""Tests for evaluate.py: the §8 sync detectors (on synthetic clips made here, then calibrated on
BounceClick) and the §7 distribution metrics (closed forms, a stand-in TorchScript network)."""
import json
import math
import os
import warnings

import numpy as np
import pytest
import torch

import evaluate as ev
import sync
from config import get_config

FPS, SR, T = 10, 16000, 16
PITCH = {"x": 1000.0, "y": 2500.0}


# ---------------------------------------------------------------------------------------------
# synthetic clips, independent of data.py
# ---------------------------------------------------------------------------------------------
def fold(p, lo, hi):
    u = np.mod(p - lo, 2 * (hi - lo))
    return lo + np.where(u < hi - lo, u, 2 * (hi - lo) - u)


def draw_discs(centres, size=32, radius=3.0, colours=((230, 40, 40),), bg=(20, 20, 32)):
    """centres T×D×2 (x, y) -> uint8 T×S×S×3, coverage by 4×4 supersampling (anti-aliased)."""
    sub = (np.arange(size * 4) + 0.5) / 4
    img = np.broadcast_to(np.array(bg, np.float64), (len(centres), size, size, 3)).copy()
    for d in range(centres.shape[1]):
        cx, cy = centres[:, d, 0, None, None], centres[:, d, 1, None, None]
        inside = ((sub[None, None, :] - cx) ** 2 + (sub[None, :, None] - cy) ** 2) <= radius ** 2
        cover = inside.reshape(len(centres), size, 4, size, 4).mean((2, 4))[..., None]
        img = img * (1 - cover) + np.array(colours[d % len(colours)], np.float64) * cover
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def bounce(start, velocity, size=32, radius=3.0):
    """One disc bouncing in the frame: (video uint8, exact impact list [(time_s, axis)])."""
    t = np.arange(T) / FPS
    lo, hi = radius, size - radius
    pos = fold(np.asarray(start)[None] + np.asarray(velocity)[None] * t[:, None], lo, hi)
    events = []
    for a, axis in enumerate("xy"):
        span, p0, v = hi - lo, start[a], velocity[a]
        m0, m1 = sorted(((p0 - lo) / span, (p0 + v * T / FPS - lo) / span))
        events += [((lo + m * span - p0) / v, axis) for m in range(math.floor(m0) + 1, math.ceil(m1))]
    return draw_discs(pos[:, None], size, radius), sorted(events)


def clicks(events, noise=0.002, seed=0):
    """Damped tones at the wall pitch, starting exactly at each event, over a quiet noise floor."""
    rng = np.random.default_rng(seed)
    n = np.arange(T * SR // FPS)
    wave = rng.normal(0, noise, len(n))
    for t0, axis in events:
        tau = (n - t0 * SR) / SR
        wave += np.where(tau >= 0, 0.5 * np.exp(-np.clip(tau, 0, None) / 0.015)
                         * np.sin(2 * np.pi * PITCH[axis] * tau), 0)
    return wave.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# detectors on synthetic clips
# ---------------------------------------------------------------------------------------------
def test_disc_track_subpixel_and_both_layouts():
    centres = np.stack([np.linspace(6.3, 25.1, T), np.linspace(20.7, 9.2, T)], 1)[:, None]
    video = draw_discs(centres)
    got, found = sync.disc_track(video)
    assert found.all()
    assert np.abs(got - centres[:, 0]).max() < 0.1      # sub-pixel from the anti-aliased rim
    as_float = torch.from_numpy(video).permute(3, 0, 1, 2).float() / 127.5 - 1  # 3×T×S×S in [-1,1]
    got_f, found_f = sync.disc_track(as_float)
    assert found_f.all() and np.allclose(got_f, got, atol=1e-3)


def test_disc_track_rejects_empty_and_two_discs():
    empty = np.full((T, 32, 32, 3), 25, np.uint8)
    _, found = sync.disc_track(empty)
    assert not found.any()
    two = draw_discs(np.tile([[[8.0, 8.0], [24.0, 22.0]]], (T, 1, 1)), colours=((230, 40, 40), (40, 80, 235)))
    centroids, found = sync.disc_track(two)
    assert not found.any() and np.isnan(centroids).all()


def test_video_impacts_recover_exact_times():
    video, truth = bounce(start=(10.0, 21.0), velocity=(38.0, -27.0))
    assert len(truth) == 3          # x at 0.5 s (exactly on frame 5), y at 0.67 s, x at 1.18 s
    got = sync.video_impacts(video, FPS)
    assert [a for _, a in got] == [a for _, a in truth]
    assert max(abs(g - t) for (g, _), (t, _) in zip(got, truth)) < 0.005   # < 5 ms


def test_video_impacts_survive_blur_and_noise():
    """Generated frames are blurry and noisy: a 3×3 box blur + noise keeps every impact."""
    video, truth = bounce(start=(10.0, 21.0), velocity=(38.0, -27.0))
    x = video.astype(np.float64)
    pad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    blurred = sum(pad[:, i:i + 32, j:j + 32] for i in range(3) for j in range(3)) / 9
    noisy = blurred + np.random.default_rng(0).normal(0, 4, x.shape)
    video2 = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    _, found = sync.disc_track(video2)
    got = sync.video_impacts(video2, FPS)
    assert found.all() and len(got) == len(truth)
    assert max(abs(g - t) for (g, _), (t, _) in zip(got, truth)) < 0.01


def test_audio_onsets_time_and_pitch():
    truth = [(0.31234, "x"), (0.8, "y"), (1.25, "x")]
    got = sync.audio_onsets(clicks(truth), SR)
    assert len(got) == 3
    for (t, pitch), (t0, axis) in zip(got, truth):
        assert abs(t - t0) < 0.001 and abs(pitch - PITCH[axis]) < 20
    assert sync.audio_onsets(clicks([]), SR) == []                     # noise alone: no onsets
    assert sync.audio_onsets(np.zeros(T * SR // FPS, np.float32), SR) == []   # silence: no onsets


def test_audio_onsets_refractory():
    """Two clicks 30 ms apart give one onset (refractory 50 ms); 80 ms apart give two."""
    assert len(sync.audio_onsets(clicks([(0.5, "x"), (0.53, "x")]), SR)) == 1
    assert len(sync.audio_onsets(clicks([(0.5, "x"), (0.58, "x")], seed=1), SR)) == 2


def test_match_events_greedy_one_to_one():
    video = [(0.50, "x"), (0.60, "y")]
    audio = [(0.58, 2500.0), (0.90, 1000.0)]
    pairs = sync.match_events(video, audio, tol=0.1)
    assert pairs == [((0.60, "y"), (0.58, 2500.0))]      # the closer pair wins; one audio, one video
    assert sync.match_events([], audio, 0.1) == []


def test_sync_metrics_synthetic_and_empty():
    video, truth = bounce(start=(10.0, 21.0), velocity=(38.0, -27.0))
    m = sync.sync_metrics([(video, clicks(truth))], FPS, SR, wall_pitch=PITCH)
    assert m["f1"] == 1.0 and m["pitch_agreement"] == 1.0 and m["median_abs_offset_ms"] < 5
    assert m["n_video_events"] == m["n_audio_events"] == len(truth)
    silent = sync.sync_metrics([(np.full((T, 32, 32, 3), 25, np.uint8), clicks([]))], FPS, SR,
                             wall_pitch=PITCH)
    assert silent["f1"] is None and silent["disc_detection_rate"] == 0.0   # None, never 0 or NaN
    json.dumps(silent)


def test_shift_wave():
    w = np.arange(10, dtype=np.float32)
    assert sync.shift_wave(w, 2 / SR, SR).tolist() == [0, 0] + list(range(8))
    assert sync.shift_wave(w, -3 / SR, SR).tolist() == list(range(3, 10)) + [0, 0, 0]


# ---------------------------------------------------------------------------------------------
# calibration on BounceClick (§8): real = ceiling, shuffled = chance, known shifts recovered
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def calib32():
    pytest.importorskip("data")
    return sync.calibration(get_config("tiny"), n=50, roundtrip_n=8)


def test_calibration_real_pairs(calib32):
    real = calib32["real"]
    print("real S=32:", real)
    assert real["f1"] >= 0.99 and real["pitch_agreement"] == 1.0
    assert real["disc_detection_rate"] == 1.0 and real["median_abs_offset_ms"] < 3


def test_calibration_shuffled_is_chance(calib32):
    shuffled = calib32["shuffled"]
    # chance: ~2.4 impacts per clip in [0.2, 1.3] s, so a ±100 ms window catches one with
    # probability ≈ 2·0.1·2.4/1.1 ≈ 0.44; measured 0.43 on these 50 clips
    print("shuffled S=32 F1:", shuffled["f1"])
    assert 0.2 < shuffled["f1"] < 0.5


@pytest.mark.parametrize("key, delta_ms", [("shift_+40ms", 40.0), ("shift_-70ms", -70.0)])
def test_calibration_known_shift_recovered(calib32, key, delta_ms):
    got = calib32[key]
    print(key, got["median_offset_ms"])
    assert abs(got["median_offset_ms"] - delta_ms) < 5 and got["f1"] >= 0.99


def test_calibration_mel_roundtrip(calib32):
    """Audio -> mel frames -> Griffin-Lim audio (tiny preset): the onsets survive."""
    rt = calib32.get("mel_roundtrip")
    if rt is None:
        pytest.skip("data.py has no wave_to_frames / frames_to_wave")
    print("mel round trip:", rt)
    assert rt["f1"] >= 0.95 and rt["pitch_agreement"] >= 0.95 and rt["median_abs_offset_ms"] < 10


def test_calibration_real_pairs_s64():
    pytest.importorskip("data")
    cfg = get_config("tiny", image_size=64, video_down=8)   # S=64 with the tiny planes (L = 8)
    real = sync.calibration(cfg, n=50, shifts_s=(), roundtrip_n=0)["real"]
    print("real S=64:", real)
    assert real["f1"] >= 0.99 and real["pitch_agreement"] == 1.0 and real["disc_detection_rate"] == 1.0


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
    cfg = get_config("tiny")
    clips = [torch.rand(3, 4, 16, 16) * 2 - 1 for _ in range(6)]
    missing = ev.distribution_metrics("video", str(tmp_path / "nope.pt"), clips, clips, cfg, "test")
    assert set(missing) == {"fvd", "kvd"}
    for entry in missing.values():
        assert entry["value"] is None and "--i3d" in entry["reason"]
    fad = ev.distribution_metrics("audio", None, [torch.zeros(100)], [torch.zeros(100)], cfg, "test")
    assert fad["fad"]["value"] is None and "--audio_net" in fad["fad"]["reason"]
    ok = ev.distribution_metrics("video", str(tiny_net_file), clips, clips, cfg, "test split")
    assert abs(ok["fvd"]["value"]) < 1e-6 and ok["fvd"]["reason"] is None
    proto = ok["fvd"]["protocol"]
    assert proto["network_sha256"] == ev.file_sha256(tiny_net_file) and proto["n_real"] == 6
    assert (proto["frames"], proto["fps"], proto["resolution"], proto["sample_rate"]) == (16, 10, 32, 16000)
    assert json.loads(json.dumps(ok))["kvd"]["value"] == ok["kvd"]["value"]


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
    train = pytest.importorskip("train")
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
    out = tmp_path / "eval.json"
    r = ev.main(["--samples", str(folder), "--out_dir", str(tmp_path / "none"), "--n", "4", "--out", str(out),
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
    r = ev.main(["--out_dir", toy_out, "--data", str(tmp_path / "clips"), "--n", "2", "--steps", "2",
                 "--what", "ae,gen,fvd", "--i3d", nets["video"], "--out", str(tmp_path / "eval.json")])
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

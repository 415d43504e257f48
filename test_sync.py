"""Tests for sync.py: the network-free detectors of PAPER.md §8 on synthetic clips made here
(independent of data.py), then calibrated on BounceClick: real pairs are the ceiling, shuffled pairs
chance, and a known audio shift is recovered."""
import json
import math

import numpy as np
import pytest
import torch

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
    return sync.calibration(get_config("tiny"), n=50, roundtrip_n=8)


def test_calibration_real_pairs(calib32):
    real = calib32["real"]
    print("real S=32:", real)
    assert real["f1"] >= 0.99 and real["pitch_agreement"] == 1.0
    assert real["disc_detection_rate"] == 1.0 and real["median_abs_offset_ms"] < 3


def test_calibration_shuffled_is_chance(calib32):
    shuffled = calib32["shuffled"]
    # chance: ~2.4 impacts per clip in [0.2, 1.3] s, so a ±100 ms window catches one with
    # probability ≈ 2·0.1·2.4/1.1 ≈ 0.44
    print("shuffled S=32 F1:", shuffled["f1"])
    assert 0.2 < shuffled["f1"] < 0.5


@pytest.mark.parametrize("key, delta_ms", [("shift_+40ms", 40.0), ("shift_-70ms", -70.0)])
def test_calibration_known_shift_recovered(calib32, key, delta_ms):
    got = calib32[key]
    print(key, got["median_offset_ms"])
    assert abs(got["median_offset_ms"] - delta_ms) < 5 and got["f1"] >= 0.99


def test_calibration_mel_roundtrip(calib32):
    """Audio -> mel frames -> Griffin-Lim audio (tiny preset): the onsets survive."""
    rt = calib32["mel_roundtrip"]
    print("mel round trip:", rt)
    assert rt["f1"] >= 0.95 and rt["pitch_agreement"] >= 0.95 and rt["median_abs_offset_ms"] < 10


def test_calibration_real_pairs_s64():
    cfg = get_config("tiny", image_size=64, video_down=8)   # S=64 with the tiny planes (L = 8)
    real = sync.calibration(cfg, n=50, shifts_s=(), roundtrip_n=0)["real"]
    print("real S=64:", real)
    assert real["f1"] >= 0.99 and real["pitch_agreement"] == 1.0 and real["disc_detection_rate"] == 1.0

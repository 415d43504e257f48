"""Tests for data.py: BounceClick's ground truth, the folder dataset's handling of bad files and its
cache, and the mp4 / wav / PNG writers (PAPER.md §2, §8)."""
import subprocess
import time
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

import data
from config import get_config
from audio import wave_to_frames
from data import WALL_PITCH, BounceClick, VideoFolder, load_clip, save_grid, write_mp4, write_wav

TINY = get_config("tiny")


# ---- 1. BounceClick --------------------------------------------------------------------------------
def test_bounceclick_deterministic_and_seeded():
    a, b, c = BounceClick(TINY, size=5, seed=1), BounceClick(TINY, size=5, seed=1), BounceClick(TINY, size=5, seed=2)
    va, wa, ea = a.render(3)
    vb, wb, eb = b.render(3)
    assert np.array_equal(va, vb) and np.array_equal(wa, wb) and ea == eb == a.events(3)
    assert not np.array_equal(wa, c.render(3)[1])
    with pytest.raises(IndexError):
        a.events(5)


@pytest.mark.parametrize("num_discs", [1, 2])
def test_bounceclick_constraints(num_discs):
    ds = BounceClick(TINY, size=200, num_discs=num_discs)
    counts = []
    for i in range(len(ds)):
        events = ds.events(i)
        times = [t for t, _ in events]
        assert times == sorted(times) and len(events) >= 1
        assert all(axis in WALL_PITCH for _, axis in events)
        assert times[0] >= 2 / TINY.fps and times[-1] <= (TINY.frames - 3) / TINY.fps
        assert np.all(np.diff(times) >= 0.25)                        # covers corner double hits
        counts.append(len(events))
    assert 2 <= np.median(counts) <= 4


def test_bounceclick_video_and_audio_match_events():
    cfg = TINY
    ds = BounceClick(cfg, size=20)
    per_frame = cfg.clip_samples // cfg.frames
    for i in range(20):
        video, wave, events = ds.render(i)
        assert video.shape == (cfg.frames, cfg.image_size, cfg.image_size, 3) and video.dtype == np.uint8
        assert wave.shape == (cfg.clip_samples,) and wave.dtype == np.float32 and np.abs(wave).max() < 0.7
        # disc centroid from the pixels that differ from the background
        weight = np.abs(video.astype(np.float32) - data.BACKGROUND).sum(-1)           # T×S×S
        grid = np.arange(cfg.image_size) + 0.5
        centroid = {"x": (weight * grid).sum((1, 2)) / weight.sum((1, 2)),
                    "y": (weight * grid[:, None]).sum((1, 2)) / weight.sum((1, 2))}
        noise_rms = np.sqrt(np.mean(wave[:per_frame] ** 2))
        for time_s, axis in events:
            # the velocity along `axis` reverses across the impact
            k = int(time_s * cfg.fps)
            track = centroid[axis]
            assert (track[k] - track[k - 1]) * (track[k + 2] - track[k + 1]) < 0, (i, time_s, axis)
            # silence just before the impact sample, a click in the 2 ms after it
            n = int(np.ceil(time_s * cfg.sample_rate))
            before = np.sqrt(np.mean(wave[n - 40: n] ** 2))
            after = np.sqrt(np.mean(wave[n: n + 32] ** 2))
            assert before < 3 * noise_rms and after > 20 * noise_rms, (i, time_s, before, after)
            # its pitch names the wall
            spectrum = np.abs(np.fft.rfft(wave[n: n + 320] * np.hanning(320), 4096))
            peak_hz = np.argmax(spectrum) * cfg.sample_rate / 4096
            assert abs(peak_hz - WALL_PITCH[axis]) < 60, (peak_hz, axis)


def test_bounceclick_items_and_labels():
    cfg = get_config("tiny", num_classes=4)
    ds = BounceClick(cfg, size=30)
    labels = []
    for i in range(30):
        video, _, _ = ds.render(i)
        label = int(ds[i]["label"]) if i < 3 else ds._scene(i)[1]
        labels.append(label)
        brightest = video.reshape(-1, 3)[np.argmax(video.astype(int).sum(-1))]
        assert np.abs(brightest.astype(float) - data.PALETTE[label]).max() <= 1
    assert set(labels) == {0, 1, 2, 3}
    item = ds[0]
    assert item["video"].shape == (3, 16, 32, 32) and item["audio"].shape == (1, 16, 32, 32)
    assert item["wave"].shape == (cfg.clip_samples,) and item["label"].dtype == torch.int64
    assert -1 <= item["video"].min() and item["video"].max() <= 1
    assert BounceClick(TINY, size=2)[1]["label"] == 0
    with pytest.raises(ValueError, match="palette"):
        BounceClick(get_config("tiny", num_classes=len(data.PALETTE) + 1))
    paper = get_config("paper")
    item = BounceClick(paper, size=1)[0]
    assert item["video"].shape == (3, 16, 256, 256) and item["audio"].shape == (1, 16, 64, 64)


# ---- 2. VideoFolder --------------------------------------------------------------------------------
def ffmpeg(*args):
    subprocess.run([data.imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", *args], check=True)


def bounce_clip(seconds, seed=0):
    """A BounceClick-looking clip of any length (the 1.6 s item tiled)."""
    video, wave, _ = BounceClick(TINY, size=1, seed=seed).render(0)
    reps = int(np.ceil(seconds / 1.6))
    frames = int(seconds * TINY.fps)
    return np.concatenate([video] * reps)[:frames], np.concatenate([wave] * reps)[: frames * 1600]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    write_mp4(root / "good.mp4", *bounce_clip(2.5), TINY)
    # 6-channel 48 kHz audio (a 440 Hz sine in every channel), 640×360 video at 25 fps, 2 s
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=640x360:rate=25:duration=2",
           "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=2",
           "-filter_complex", "[1:a]pan=5.1|c0=c0|c1=c0|c2=c0|c3=c0|c4=c0|c5=c0[a]",
           "-map", "0:v", "-map", "[a]", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac",
           str(root / "surround.mov"))
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=25:duration=2", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", str(root / "silent.mp4"))
    good = (root / "good.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(good[: len(good) // 2])
    (root / "garbage.mkv").write_bytes(np.random.default_rng(0).bytes(4000))
    write_mp4(root / "short.mp4", *bounce_clip(1.0), TINY)
    return root


def test_folder_skips_bad_files(media, tmp_path):
    with pytest.warns(UserWarning, match="skipping") as caught:
        ds = VideoFolder(media, TINY, cache_dir=tmp_path / "cache")
    assert len(ds) == 2 and ds.classes == []
    reasons = {path.split("/")[-1]: reason for path, reason in ds.skipped}
    assert set(reasons) == {"silent.mp4", "truncated.mp4", "garbage.mkv", "short.mp4"}
    assert "no audio track" in reasons["silent.mp4"] and "truncated" in reasons["truncated.mp4"]
    assert "unreadable" in reasons["garbage.mkv"] and "too short" in reasons["short.mp4"]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 4 and all(any(name in m for m in messages) for name in reasons)
    for item in (ds[0], ds[1]):
        assert item["video"].shape == (3, 16, 32, 32) and item["audio"].shape == (1, 16, 32, 32)
        assert item["wave"].shape == (TINY.clip_samples,) and int(item["label"]) == 0
    # the 5.1 track is downmixed to mono and resampled, the 440 Hz tone intact
    surround = ds[[p.endswith("surround.mov") for p, *_ in ds.clips].index(True)]["wave"].numpy()
    assert np.abs(surround).max() > 0.1
    assert abs(np.argmax(np.abs(np.fft.rfft(surround))) * TINY.sample_rate / len(surround) - 440) < 2


def test_folder_windows_train_random_eval_fixed(media, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train = VideoFolder(media, TINY, "train", cache_dir=tmp_path)
        held = VideoFolder(media, TINY, "eval", cache_dir=tmp_path)
    good = [p.endswith("good.mp4") for p, *_ in train.clips].index(True)
    assert train.clips[good][2] == 10                                  # 25 frames → 10 starts
    torch.manual_seed(0)
    starts = {float(train[good]["wave"][:64].abs().sum()) for _ in range(8)}
    assert len(starts) > 1
    assert torch.equal(held[good]["video"], held[good]["video"])


def test_folder_cache_and_errors(media, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        cold = VideoFolder(media, TINY, cache_dir=cache)
        t1 = time.perf_counter()

        def no_decoding(*args):
            raise AssertionError("decoded although cached")
        monkeypatch.setattr(data, "_decode", no_decoding)
        warm = VideoFolder(media, TINY, cache_dir=cache)
        t2 = time.perf_counter()
    print(f"folder of {len(cold.clips) + len(cold.skipped)} files: cold {t1 - t0:.2f} s, cached {t2 - t1:.3f} s")
    assert len(warm) == len(cold) and warm.skipped == cold.skipped
    assert not list(cache.glob("*.tmp"))
    monkeypatch.undo()
    bad = tmp_path / "all_bad"
    bad.mkdir()
    for name in ("silent.mp4", "short.mp4"):
        (bad / name).write_bytes((media / name).read_bytes())
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="all_bad"):
        VideoFolder(bad, TINY, cache_dir=cache)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no video files"):
        VideoFolder(empty, TINY, cache_dir=cache)


def test_folder_class_labels(media, tmp_path):
    for cls in ("forest", "beach"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "clip.mp4").write_bytes((media / "good.mp4").read_bytes())
    ds = VideoFolder(tmp_path, get_config("tiny", num_classes=2), "eval", cache_dir=tmp_path / ".cache")
    assert ds.classes == ["beach", "forest"]
    assert sorted(int(ds[i]["label"]) for i in range(len(ds))) == [0, 1]
    with pytest.raises(ValueError, match="num_classes=3"):
        VideoFolder(tmp_path, get_config("tiny", num_classes=3), cache_dir=tmp_path / ".cache")


# ---- 3. writing ------------------------------------------------------------------------------------
def test_mp4_round_trip(tmp_path):
    video, wave, _ = BounceClick(TINY, size=1).render(0)
    write_mp4(tmp_path / "clip.mp4", video, wave, TINY)
    clip_video, clip_wave = load_clip(tmp_path / "clip.mp4", TINY)
    assert clip_video.shape == (3, 16, 32, 32)
    raw_video, raw_wave = data._decode(str(tmp_path / "clip.mp4"), TINY)
    assert len(raw_video) == 16 and len(raw_wave) == TINY.clip_samples   # 1.6 s exactly
    assert (clip_video - (torch.from_numpy(video).permute(3, 0, 1, 2) / 127.5 - 1)).abs().mean() < 0.05
    # AAC may delay the sound: align by cross-correlation within ±5 ms, then compare
    a, b = clip_wave.numpy(), wave
    lags = range(-80, 81)
    corr = [np.dot(a[max(lag, 0): len(a) + min(lag, 0)], b[max(-lag, 0): len(b) + min(-lag, 0)]) for lag in lags]
    delay = list(lags)[int(np.argmax(corr))]
    aligned = np.corrcoef(a[max(delay, 0): len(a) + min(delay, 0)], b[max(-delay, 0): len(b) + min(-delay, 0)])[0, 1]
    print(f"AAC delay {delay} samples ({delay / 16:.2f} ms), correlation {aligned:.4f}")
    assert aligned > 0.9
    # float-tensor input and an odd size (padded to even for yuv420p) both write
    write_mp4(tmp_path / "odd.mp4", np.zeros((16, 33, 33, 3), np.uint8), wave, TINY)
    assert len(data._decode(str(tmp_path / "odd.mp4"), TINY)[0]) == 16
    write_mp4(tmp_path / "float.mp4", torch.zeros(3, 16, 32, 32), torch.from_numpy(wave), TINY)
    with pytest.raises(ValueError, match="no such file"):
        load_clip(tmp_path / "missing.mp4", TINY)


def test_wav_and_grid(tmp_path):
    wave = 0.5 * torch.sin(torch.arange(TINY.clip_samples) * 0.3)   # any waveform in [-1, 1]
    write_wav(tmp_path / "a.wav", wave, TINY.sample_rate)
    back, sr = sf.read(tmp_path / "a.wav", dtype="float32")
    assert sr == TINY.sample_rate and np.abs(back - wave.numpy()).max() < 1.0 / 32768 + 1e-6
    videos = torch.rand(2, 3, 16, 32, 32) * 2 - 1
    save_grid(tmp_path / "grid.png", videos, wave_to_frames(torch.stack([wave, wave]), TINY))
    grid = data.iio.imread(tmp_path / "grid.png")
    assert grid.shape == (2 * 2 * (32 + 2), 16 * (32 + 2), 3)

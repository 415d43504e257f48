"""
Data for ProAV-DiT: BounceClick, folder datasets, writers (PAPER.md §2 and §8).

The waveform ⇄ mel-frame projection that every item goes through lives in audio.py. Sections:

1. BounceClick   [ours, §8] discs bouncing in a box, a click at each wall impact whose pitch names
                 the wall; impact times are analytic, so synchrony can be measured with no network.
2. VideoFolder   [ours, §2 after MM-Diffusion] any folder of videos (Landscape, AIST++): 10 fps,
                 shorter side → S then centre crop, mono 16 kHz; decoded once by the ffmpeg binary
                 that imageio-ffmpeg ships, cached on disk; bad files are skipped and counted.
3. Writing       mp4 (H.264 + AAC), 16-bit wav, a PNG grid of frames with their mel images.

Every item, from either dataset, is the same dict:
    video  float32 3×T×S×S in [-1, 1]
    audio  float32 1×T×M×F in [-1, 1]   (audio.wave_to_frames of `wave`)
    wave   float32 (N,)                  N = cfg.clip_samples
    label  int64 scalar tensor           0 when the dataset has no classes
"""
import hashlib
import math
import os
import re
import subprocess
import tempfile
import warnings

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import soundfile as sf
import torch

from audio import wave_to_frames

# ==================================================================================================
# 1. BounceClick: the embedded dataset with exact synchrony (§8)
# ==================================================================================================
WALL_PITCH = {"x": 1000.0, "y": 2500.0}   # Hz: "x" = hit a left/right wall (x-velocity reverses), "y" = top/bottom

# Well-separated saturated colours; a class label is the disc colour.
PALETTE = np.array([
    (230, 25, 25), (245, 130, 30), (240, 220, 30), (120, 220, 40), (20, 160, 60),
    (40, 210, 220), (40, 80, 235), (140, 50, 220), (230, 40, 200), (240, 240, 240)], dtype=np.float32)
BACKGROUND = np.array((20, 20, 32), dtype=np.float32)   # a fixed dark background
MIN_GAP_S = 0.25          # at least this long between any two impacts (x and y alike: no corner hits)
EDGE_FRAMES = 2           # no impact within two frames of the first or the last video frame
SPEED_RANGE = (0.6, 1.6)  # |velocity| per axis, in box spans per second: ~1-2.5 impacts per axis
CLICK_DECAY_S = 0.015     # tone amplitude time constant: e^(-60 ms / 15 ms) ≈ 2 %, a ~60 ms click
CLICK_LENGTH_S = 0.12     # tone cut here (amplitude e^-8 by then)
CLICK_AMPLITUDE = 0.5     # peak well below clipping; tones never overlap (gap 0.25 s ≫ 0.12 s)
# The noise floor sits BELOW the log-mel floor (audio.LOG_MEL_MIN), so the projected frames are flat
# between clicks: a floor above it makes every mel frame random texture that MDSA encodes faithfully
# and the denoiser cannot predict (RESULTS.md, "How were the earlier defaults found?").
NOISE_STD = 5e-6          # −100 dB re the click, about 16-bit dither: not digital silence


def _fold(p, lo, hi):
    """Unfolded coordinate → position in [lo, hi] with elastic reflection (a triangle wave)."""
    span = hi - lo
    u = np.mod(p - lo, 2 * span)
    return lo + np.where(u < span, u, 2 * span - u)


def _wall_times(p0, v, lo, hi, duration):
    """Times in (0, duration) when p0 + v·t reaches a wall, i.e. lo + m·span for an integer m."""
    span = hi - lo
    m_first, m_last = sorted(((p0 - lo) / span, (p0 + v * duration - lo) / span))
    ms = np.arange(math.floor(m_first) + 1, math.ceil(m_last))
    return sorted(float((lo + m * span - p0) / v) for m in ms)


DISC_RADIUS_FRAC = 0.1   # a disc's radius as a share of the frame side S: its centre bounces at r and S − r

# The held-out clips of a run trained on BounceClick seed s are BounceClick seed s + HELDOUT_SEED_OFFSET:
# item i is a pure function of (seed, i), so the two sets share no clip.
HELDOUT_SEED_OFFSET = 1000


class BounceClick(torch.utils.data.Dataset):
    """Discs bouncing in an S×S box; each wall impact clicks at WALL_PITCH[axis], exactly on time.

    Item i is a pure function of (seed, i). The discs pass through each other (only walls make
    sound). Frame k shows the state at time k/fps; impacts fall in
    [EDGE_FRAMES/fps, (T−1−EDGE_FRAMES)/fps] = [0.2 s, 1.3 s], so every impact has two frames on
    each side for a detector to fit lines through, and the audio that runs to 1.6 s has no
    impact the video cannot see.
    """

    def __init__(self, cfg, size: int = 10_000, seed: int = 0, num_discs: int = 1):
        if cfg.num_classes > len(PALETTE):
            raise ValueError(f"BounceClick: num_classes={cfg.num_classes} but the palette has only "
                             f"{len(PALETTE)} colours")
        self.cfg, self.size, self.seed, self.num_discs = cfg, size, seed, num_discs
        self.radius = DISC_RADIUS_FRAC * cfg.image_size                        # pixels
        # the centre stays in [r, S − r]: the disc touches the wall at the impact instant
        self.lo, self.hi = self.radius, cfg.image_size - self.radius
        self.duration = cfg.frames / cfg.fps                                    # 1.6 s of audio
        self.first_ok = EDGE_FRAMES / cfg.fps
        self.last_ok = (cfg.frames - 1 - EDGE_FRAMES) / cfg.fps

    def __len__(self):
        return self.size

    def _scene(self, index):
        """(rng, label, colours D×3, start D×2, velocity D×2 in px/s, events). The rng is returned
        in its state after the scene, so render() draws the noise from the same stream."""
        if not 0 <= index < self.size:
            raise IndexError(f"BounceClick: index {index} out of range for size {self.size}")
        rng = np.random.default_rng([self.seed, index])
        n_colours = self.cfg.num_classes if self.cfg.num_classes > 0 else len(PALETTE)
        label = int(rng.integers(n_colours))
        if self.cfg.num_classes > 0:
            colours = np.repeat(PALETTE[label][None], self.num_discs, 0)
        else:
            colours, label = PALETTE[rng.integers(len(PALETTE), size=self.num_discs)], 0
        span = self.hi - self.lo
        for _ in range(10_000):                                                 # rejection sampling
            start = rng.uniform(self.lo, self.hi, size=(self.num_discs, 2))
            # more discs move slower, so the clip still holds ~2-4 impacts in all
            speed = rng.uniform(*SPEED_RANGE, size=(self.num_discs, 2)) * span / self.num_discs
            velocity = speed * rng.choice([-1.0, 1.0], size=(self.num_discs, 2))
            events = sorted((t, axis) for d in range(self.num_discs) for a, axis in enumerate("xy")
                            for t in _wall_times(start[d, a], velocity[d, a], self.lo, self.hi,
                                                 self.duration))
            times = np.array([t for t, _ in events])
            if (len(times) >= 1 and times[0] >= self.first_ok and times[-1] <= self.last_ok
                    and np.all(np.diff(times) >= MIN_GAP_S)):
                return rng, label, colours, start, velocity, events
        raise RuntimeError(f"BounceClick: no valid scene for index {index} (num_discs too large?)")

    def events(self, index):
        """[(time_s, "x"|"y"), ...] sorted by time: the analytic impact times, no rendering."""
        return self._scene(index)[5]

    def render(self, index):
        """→ (video uint8 T×S×S×3, wave float32 (N,), events)."""
        return self._render(index)[:3]

    def _render(self, index):
        cfg = self.cfg
        rng, label, colours, start, velocity, events = self._scene(index)
        S, T = cfg.image_size, cfg.frames
        t = np.arange(T, dtype=np.float64) / cfg.fps                            # frame k at k/fps
        centres = _fold(start[None] + velocity[None] * t[:, None, None], self.lo, self.hi)  # T×D×2
        pix = np.arange(S, dtype=np.float64) + 0.5                              # pixel centres
        video = np.empty((T, S, S, 3), np.uint8)
        video[:] = BACKGROUND.astype(np.uint8)
        reach = int(math.ceil(self.radius + 1))     # a disc touches only pixels this close to its centre
        for k in range(T):                          # per frame, the disc's bounding box only:
            for d in range(self.num_discs):         # ~20× less work than the whole frame at S = 256
                cx, cy = centres[k, d]                                          # x = column, y = row
                r0, r1 = max(int(cy) - reach, 0), min(int(cy) + reach + 1, S)
                c0, c1 = max(int(cx) - reach, 0), min(int(cx) + reach + 1, S)
                dist = np.sqrt((pix[None, c0:c1] - cx) ** 2 + (pix[r0:r1, None] - cy) ** 2)
                # anti-aliasing: coverage ramps from 1 to 0 across the pixel that straddles the rim
                cover = np.clip(self.radius + 0.5 - dist, 0.0, 1.0)[..., None]
                patch = video[k, r0:r1, c0:c1].astype(np.float32)
                video[k, r0:r1, c0:c1] = np.rint(patch * (1 - cover) + colours[d] * cover)

        sr, N = cfg.sample_rate, cfg.clip_samples
        wave = rng.normal(0.0, NOISE_STD, N)
        n_click = int(CLICK_LENGTH_S * sr)
        for time_s, axis in events:
            first = math.ceil(time_s * sr)                                      # first sample ≥ impact
            n = np.arange(first, min(first + n_click, N))
            tau = (n - time_s * sr) / sr                     # seconds since the exact (sub-sample) impact
            wave[n] += CLICK_AMPLITUDE * np.exp(-tau / CLICK_DECAY_S) * np.sin(2 * np.pi * WALL_PITCH[axis] * tau)
        return video, wave.astype(np.float32), events, label

    def __getitem__(self, index):
        video, wave, _, label = self._render(index)
        return _item(video, wave, label, self.cfg)


def _item(video_uint8, wave, label, cfg):
    """uint8 T×S×S×3 + float (N,) + label → the dataset item dict (see the module docstring)."""
    video = torch.from_numpy(np.ascontiguousarray(video_uint8)).permute(3, 0, 1, 2).contiguous()
    video = video.float().div_(127.5).sub_(1.0)
    wave = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    return dict(video=video, audio=wave_to_frames(wave, cfg), wave=wave,
                label=torch.tensor(label, dtype=torch.int64))


# ==================================================================================================
# 2. VideoFolder: Landscape, AIST++ or any folder of videos (§2)
# ==================================================================================================
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm")
CACHE_VERSION = 1          # bump when the decoding below changes, so old caches are not reused
AUDIO_SLACK_S = 0.02       # audio this much short of a window is zero-padded (AAC's last frame)


def _ffmpeg(args, stdin=None):
    """Run the ffmpeg binary imageio-ffmpeg ships; → (returncode, stdout bytes, stderr text)."""
    proc = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", *args],
                          input=stdin, capture_output=True)
    return proc.returncode, proc.stdout, proc.stderr.decode("utf-8", "replace")


class BadClip(ValueError):
    """A file that cannot give a clip; str() names the file and the reason."""


def _check_decode(path, stream, rc, err):
    """ffmpeg exits 0 on a file cut short (a broken download) and only says "partial file": call
    that truncated. Other decoder complaints (a few corrupt packets) are tolerated."""
    lines = [line.strip() for line in err.splitlines() if line.strip()]
    if rc != 0:
        raise BadClip(f"{path}: unreadable {stream} ({lines[-1] if lines else f'ffmpeg exit {rc}'})")
    partial = [line for line in lines if "partial file" in line]
    if partial:
        raise BadClip(f"{path}: truncated ({partial[0]})")


def _decode(path, cfg):
    """Decode a whole file → (video uint8 n×S×S×3 at cfg.fps, wave float32 mono at cfg.sample_rate).

    Raises BadClip for a file ffmpeg cannot read, or with no video or no audio stream.
    """
    _, _, info = _ffmpeg(["-i", path])                  # no output given: ffmpeg just lists streams
    streams = re.findall(r"Stream #\S+.*?: (Video|Audio):", info)
    if not streams:
        last = [line for line in info.strip().splitlines() if line.strip()]
        raise BadClip(f"{path}: unreadable ({last[-1].strip() if last else 'no streams'})")
    if "Video" not in streams:
        raise BadClip(f"{path}: no video stream")
    if "Audio" not in streams:
        raise BadClip(f"{path}: no audio track")
    S = cfg.image_size
    # resample time with the fps filter, scale the shorter side to S (the longer one follows), crop
    # the centre; area averaging, since datasets are mostly downscaled
    vf = (f"fps={cfg.fps},scale={S}:{S}:force_original_aspect_ratio=increase:flags=area,"
          f"crop={S}:{S},setsar=1")
    rc, raw, err = _ffmpeg(["-v", "error", "-i", path, "-map", "0:v:0", "-vf", vf,
                            "-pix_fmt", "rgb24", "-f", "rawvideo", "-"])
    _check_decode(path, "video", rc, err)
    video = np.frombuffer(raw, np.uint8)
    video = video[: video.size // (S * S * 3) * S * S * 3].reshape(-1, S, S, 3).copy()  # writable
    # -ac 1 downmixes any layout (stereo, 5.1, ...) with ffmpeg's standard matrix
    rc, raw, err = _ffmpeg(["-v", "error", "-i", path, "-map", "0:a:0", "-ac", "1",
                            "-ar", str(cfg.sample_rate), "-f", "f32le", "-"])
    _check_decode(path, "audio", rc, err)
    return video, np.frombuffer(raw, np.float32).copy()


def _num_windows(n_frames, n_samples, cfg):
    """How many clip starts (one per video frame) fit both streams; ≤ 0 means too short."""
    per_frame = cfg.clip_samples // cfg.frames                                 # 1,600 samples
    slack = int(AUDIO_SLACK_S * cfg.sample_rate)
    return min(n_frames - cfg.frames, (n_samples + slack - cfg.clip_samples) // per_frame) + 1


def _window(video, wave, start, cfg):
    """Frames start … start+T−1 and the same 1.6 s of audio (zero-padded by ≤ AUDIO_SLACK_S)."""
    first = start * (cfg.clip_samples // cfg.frames)
    clip_wave = wave[first: first + cfg.clip_samples]
    clip_wave = np.pad(clip_wave, (0, cfg.clip_samples - len(clip_wave)))
    return video[start: start + cfg.frames], clip_wave


def _too_short(path, n_frames, n_samples, cfg):
    return BadClip(f"{path}: too short ({n_frames / cfg.fps:.2f} s of video, "
                   f"{n_samples / cfg.sample_rate:.2f} s of audio; a clip needs "
                   f"{cfg.frames / cfg.fps:.2f} s)")


def load_clip(path, cfg):
    """One file's first 1.6 s → (video float32 3×T×S×S in [-1, 1], wave float32 (N,)).
    Raises ValueError (BadClip) naming the file and the reason. The sampler's --cond input."""
    path = str(path)
    if not os.path.isfile(path):
        raise BadClip(f"{path}: no such file")
    video, wave = _decode(path, cfg)
    if _num_windows(len(video), len(wave), cfg) < 1:
        raise _too_short(path, len(video), len(wave), cfg)
    video, wave = _window(video, wave, 0, cfg)
    item = _item(video, wave, 0, cfg)
    return item["video"], item["wave"]


def _default_cache_dir():
    return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                        "proav-dit", "clips")


class VideoFolder(torch.utils.data.Dataset):
    """Every video under `root` (recursive), as 1.6 s clips with their sound.

    split "train": a random window (any start frame) each time an item is read;
    split "eval":  the centred window, so evaluation sees the same clips every run.
    Labels: when every file sits in a sub-folder of root, the sub-folder names, sorted, are the
    classes (`self.classes`); otherwise there are none and every label is 0.

    Construction decodes every file once into `cache_dir` (default ~/.cache/proav-dit/clips; the
    full-length clip at S×S and fps, uncompressed, so ~S²·3 bytes per frame), keyed by the file's
    path, size and mtime and the data settings; the next construction and every epoch read the
    cache. Files that cannot give a clip (unreadable, no video or no audio stream, shorter than
    1.6 s: skipped rather than padded, as padding would teach silence and frozen frames) are
    skipped with a warning and listed in `self.skipped` as (path, reason). The verdict is cached
    too (a replaced file has a new mtime and is probed again; delete the cache to retry the rest).
    An item reads its whole cached clip and cuts a window: cheap for Landscape's 10 s clips.
    """

    def __init__(self, root, cfg, split: str = "train", cache_dir=None):
        if split not in ("train", "eval"):
            raise ValueError(f"VideoFolder: split must be 'train' or 'eval', not {split!r}")
        self.root, self.cfg, self.split = str(root), cfg, split
        self.cache_dir = str(cache_dir) if cache_dir is not None else _default_cache_dir()
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"VideoFolder: {self.root} is not a folder")
        paths = []
        for folder, dirs, files in os.walk(self.root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))         # skip hidden (caches)
            paths += [os.path.join(folder, f) for f in sorted(files)
                      if f.lower().endswith(VIDEO_EXTENSIONS)]
        if not paths:
            raise ValueError(f"VideoFolder: no video files ({', '.join(VIDEO_EXTENSIONS)}) under {self.root}")
        top = [os.path.relpath(p, self.root).split(os.sep) for p in paths]
        self.classes = sorted({t[0] for t in top}) if all(len(t) > 1 for t in top) else []
        if cfg.num_classes > 0 and len(self.classes) != cfg.num_classes:
            raise ValueError(f"VideoFolder: cfg.num_classes={cfg.num_classes} but {self.root} has "
                             f"{len(self.classes)} class sub-folders {self.classes}")
        os.makedirs(self.cache_dir, exist_ok=True)
        self.clips, self.skipped = [], []       # clips: (path, cache file, windows, label)
        for path, parts in zip(paths, top):
            try:
                cache_file, windows = self._probe(path)
            except BadClip as bad:
                warnings.warn(f"VideoFolder: skipping {bad}")
                self.skipped.append((path, str(bad)))
                continue
            label = self.classes.index(parts[0]) if self.classes else 0
            self.clips.append((path, cache_file, windows, label))
        if not self.clips:
            raise ValueError(f"VideoFolder: none of the {len(paths)} files under {self.root} gives "
                             f"a clip; first problem: {self.skipped[0][1]}")

    def _cache_file(self, path):
        st, c = os.stat(path), self.cfg
        key = repr((os.path.abspath(path), st.st_size, st.st_mtime_ns, c.image_size, c.fps,
                    c.sample_rate, CACHE_VERSION))
        return os.path.join(self.cache_dir, hashlib.sha1(key.encode()).hexdigest() + ".npz")

    def _probe(self, path):
        """→ (cache file, number of windows), decoding the file into the cache if it is not there."""
        cache_file = self._cache_file(path)
        if not os.path.exists(cache_file):
            try:
                video, wave = _decode(path, self.cfg)
                arrays = dict(video=video, wave=wave, n_frames=len(video), n_samples=len(wave))
            except BadClip as bad:
                arrays = dict(reason=str(bad))          # remember the verdict, too
            # write then rename: a killed run never leaves a half-written cache entry
            tmp = f"{cache_file}.{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, cache_file)
        with np.load(cache_file) as cached:             # lazy: reads only the keys asked for
            if "reason" in cached:
                raise BadClip(str(cached["reason"]))
            n_frames, n_samples = int(cached["n_frames"]), int(cached["n_samples"])
        windows = _num_windows(n_frames, n_samples, self.cfg)
        if windows < 1:
            raise _too_short(path, n_frames, n_samples, self.cfg)
        return cache_file, windows

    def __len__(self):
        return len(self.clips)

    def __getitem__(self, index):
        path, cache_file, windows, label = self.clips[index]
        # torch's RNG, which DataLoader seeds differently in each worker
        start = int(torch.randint(windows, ())) if self.split == "train" else (windows - 1) // 2
        with np.load(cache_file) as cached:
            video, wave = _window(cached["video"], cached["wave"], start, self.cfg)
        return _item(video, wave, label, self.cfg)


# ==================================================================================================
# 3. Writing: mp4 with sound, wav, a PNG grid (§2)
# ==================================================================================================
def to_uint8_video(video) -> np.ndarray:
    """Float tensor 3×T×S×S in [-1, 1] (or a uint8 array T×S×S×3, passed through) → uint8 T×S×S×3."""
    if isinstance(video, np.ndarray) and video.dtype == np.uint8:
        return video
    video = torch.as_tensor(video).detach().float().cpu()
    return ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()


def write_wav(path, wave, sr):
    """Mono 16-bit PCM wav; samples beyond [-1, 1] are clipped."""
    wave = np.clip(np.asarray(torch.as_tensor(wave).detach().float().cpu()), -1.0, 1.0)
    sf.write(str(path), wave, sr, subtype="PCM_16")


def write_mp4(path, video, wave, cfg):
    """H.264 (yuv420p) + AAC mp4 via the imageio-ffmpeg binary.

    video: uint8 T×S×S×3 or float 3×T×S×S in [-1, 1]; wave: (N,) at cfg.sample_rate.
    yuv420p halves the chroma resolution, so H.264 needs even sides: an odd S is padded by one
    black row/column. Small frames are fine (x264 pads to 16×16 macroblocks internally; 32×32 works).
    """
    frames = to_uint8_video(video)
    T, H, W, _ = frames.shape
    with tempfile.TemporaryDirectory() as tmp:
        wav = os.path.join(tmp, "audio.wav")
        write_wav(wav, wave, cfg.sample_rate)
        rc, _, err = _ffmpeg([
            "-y", "-v", "error",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{W}x{H}", "-r", str(cfg.fps), "-i", "-",
            "-i", wav, "-map", "0:v", "-map", "1:a",
            "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-crf", "16",
            "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart",
            str(path)], stdin=np.ascontiguousarray(frames).tobytes())
    if rc != 0:
        raise RuntimeError(f"write_mp4: ffmpeg failed writing {path}: {err.strip()}")


def save_grid(path, videos, audio_frames=None):
    """PNG grid: one row block per clip, its T video frames side by side and, below them, its T mel
    frames (low frequencies at the bottom, stretched to S×S by nearest neighbour).

    videos: B×3×T×S×S (or 3×T×S×S) in [-1, 1]; audio_frames: B×1×T×M×F (or 1×T×M×F) in [-1, 1].
    """
    videos = torch.as_tensor(videos).detach().float().cpu()
    videos = videos[None] if videos.dim() == 4 else videos
    B, _, T, S, _ = videos.shape
    gap = 2                                                                     # pixels between tiles
    rows_per_clip = 1 if audio_frames is None else 2
    canvas = np.zeros((B * rows_per_clip * (S + gap), T * (S + gap), 3), np.uint8)
    if audio_frames is not None:
        audio_frames = torch.as_tensor(audio_frames).detach().float().cpu()
        audio_frames = audio_frames[None] if audio_frames.dim() == 4 else audio_frames
        M, Fw = audio_frames.shape[-2:]
        rows = torch.arange(S) * M // S                                         # nearest-neighbour
        cols = torch.arange(S) * Fw // S
    for b in range(B):
        frames = to_uint8_video(videos[b])
        top = b * rows_per_clip * (S + gap)
        for t in range(T):
            canvas[top: top + S, t * (S + gap): t * (S + gap) + S] = frames[t]
            if audio_frames is not None:
                mel = audio_frames[b, 0, t].flip(0)[rows][:, cols]              # S×S, low freq at bottom
                grey = ((mel.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
                canvas[top + S + gap: top + 2 * S + gap, t * (S + gap): t * (S + gap) + S] = grey[..., None]
    iio.imwrite(str(path), canvas)

"""
Audio-video sync on BounceClick with no network (PAPER.md §8): detectors and metrics.

All [ours]. BounceClick's ground truth is exact, so sync can be measured with hand-written
detectors that work on DECODED frames and waveforms; the same functions score real clips
(calibration) and generated ones:
  disc_track      video -> the disc's centroid per frame, and whether exactly one disc was seen
  moves_physically  centroid track -> whether the disc moves as the physics allows: constant
                  velocity between elastic reflections at the walls
  video_impacts   centroid track -> wall impacts: a velocity reversal per axis, the impact time
                  where the lines through frames k-2..k-1 and k+1..k+2 cross (frame k excluded)
  audio_onsets    waveform -> onsets: a 2 ms RMS envelope crossing a threshold, 50 ms refractory;
                  the pitch of each onset from the FFT peak of a short window just after it
  match_events    one-to-one greedy matching of video impacts and audio onsets within a tolerance
  sync_metrics    many (video, wave) pairs -> precision / recall / F1, offsets in ms, wall-pitch
                  agreement, disc detection rate, counts
`calibration()` runs the checks §8 asks for: real pairs (the ceiling, F1 = 1), shuffled pairs
(chance), audio shifted by a known Δ (recovered by the signed median offset) and the audio
projection's round trip (wave -> mel frames -> Griffin-Lim wave).
"""
import numpy as np
import torch


# ---------------------------------------------------------------------------------------------
# Video: the disc's centroid track
# ---------------------------------------------------------------------------------------------
def video_to_thwc(video) -> np.ndarray:
    """Any clip -> float32 numpy T×S×S×3 in [0, 1].

    Accepts uint8 T×S×S×3 (what BounceClick.render and decoded mp4 give) or a float 3×T×S×S
    tensor / array in [-1, 1] (what the dataset and the sampler give)."""
    if isinstance(video, torch.Tensor):
        video = video.detach().float().cpu().numpy()
    video = np.asarray(video)
    if video.dtype == np.uint8:
        assert video.ndim == 4 and video.shape[-1] == 3, f"uint8 video must be T×S×S×3, got {video.shape}"
        return video.astype(np.float32) / 255.0
    assert video.ndim == 4 and video.shape[0] == 3, f"float video must be 3×T×S×S, got {video.shape}"
    return ((np.clip(video, -1, 1) + 1) / 2).transpose(1, 2, 3, 0).astype(np.float32)


def _blobs(mask: np.ndarray):
    """4-connected components of a boolean H×W mask -> (labels H×W int, list of areas).

    Label propagation (each pixel takes the smallest index among its neighbours until nothing
    changes): a few vectorised sweeps per blob diameter, and no scipy."""
    h, w = mask.shape
    none = h * w                                      # the label of background pixels
    lab = np.where(mask, np.arange(h * w).reshape(h, w), none)
    while True:
        new = lab.copy()
        new[1:] = np.minimum(new[1:], lab[:-1])
        new[:-1] = np.minimum(new[:-1], lab[1:])
        new[:, 1:] = np.minimum(new[:, 1:], lab[:, :-1])
        new[:, :-1] = np.minimum(new[:, :-1], lab[:, 1:])
        new = np.where(mask, new, none)
        if np.array_equal(new, lab):
            break
        lab = new
    ids, areas = np.unique(lab[mask], return_counts=True)
    return lab, list(zip(ids.tolist(), areas.tolist()))


def disc_track(video, min_contrast=0.1, min_area=2, max_area_frac=0.25, main_frac=0.85):
    """Centroid of the one disc in each frame.

    video: see video_to_thwc. Returns (centroids, found): centroids T×2 float64, (x, y) in pixels
    with the frame spanning [0, S] (pixel i's centre is i + ½), NaN where no disc; found bool T.

    Per frame: the background is the per-channel median (the disc covers a small part of the frame);
    foreground strength = colour distance to it. Rule for "one disc detected" [ours]:
      - the strongest pixel is at least `min_contrast` away from the background (in [0,1] units);
      - the core mask (strength ≥ half the frame's maximum: half-max survives blur) splits into
        4-connected blobs, and the largest holds ≥ `main_frac` of the core pixels (stray specks are
        tolerated, a second disc is not) and has a plausible area, min_area..max_area_frac·S².
    The centroid is weighted by strength over the main blob's box grown by 2 px, so the anti-aliased
    rim counts in proportion to coverage (strength is linear in coverage), giving sub-pixel centres."""
    frames = video_to_thwc(video)
    t, h, w, _ = frames.shape
    centroids = np.full((t, 2), np.nan)
    found = np.zeros(t, dtype=bool)
    ys, xs = np.mgrid[0:h, 0:w] + 0.5                 # pixel i covers [i, i+1]: its centre is i + ½
    for k, img in enumerate(frames):
        bg = np.median(img.reshape(-1, 3), axis=0)
        strength = np.linalg.norm(img - bg, axis=-1)
        peak = strength.max()
        if peak < min_contrast:
            continue
        core = strength >= 0.5 * peak
        lab, blobs = _blobs(core)
        main_id, area = max(blobs, key=lambda b: b[1])
        if area < main_frac * core.sum() or not (min_area <= area <= max_area_frac * h * w):
            continue
        by, bx = np.nonzero(lab == main_id)
        box = np.zeros_like(core)
        box[max(by.min() - 2, 0):by.max() + 3, max(bx.min() - 2, 0):bx.max() + 3] = True
        weight = np.where(box, np.maximum(strength - np.median(strength), 0), 0)  # minus the bg noise
        centroids[k] = (weight * xs).sum() / weight.sum(), (weight * ys).sum() / weight.sum()
        found[k] = True
    return centroids, found


def impacts_from_track(centroids, fps, min_speed):
    """Wall impacts from a T×2 centroid track -> sorted list of (time_s, axis "x"|"y").

    A reversal at frame k on an axis: k is a local extremum (rising then not rising, or the reverse),
    and the slopes through k-2..k-1 (in) and k+1..k+2 (out) have opposite signs, each at least
    `min_speed` px/frame (noise on a near-still axis is not an impact). Frame k is excluded from
    both lines because it may lie on either side of the impact. The impact time is where the two
    lines cross. Near the clip's ends, where one side has a single frame, that side's slope is taken
    as the mirror of the other (elastic reflection) [ours]."""
    t = len(centroids)
    events = []
    for axis_i, axis in enumerate("xy"):
        c = centroids[:, axis_i]
        ok = lambda i: 0 <= i < t and not np.isnan(c[i])
        for k in range(1, t - 1):
            if not (ok(k - 1) and ok(k) and ok(k + 1)):
                continue
            d_prev, d_next = c[k] - c[k - 1], c[k + 1] - c[k]
            if not ((d_prev > 0 and d_next <= 0) or (d_prev < 0 and d_next >= 0)):
                continue
            slope_in = c[k - 1] - c[k - 2] if ok(k - 2) else None
            slope_out = c[k + 2] - c[k + 1] if ok(k + 2) else None
            if slope_in is None and slope_out is None:
                continue
            slope_in = -slope_out if slope_in is None else slope_in
            slope_out = -slope_in if slope_out is None else slope_out
            if slope_in * slope_out >= 0 or min(abs(slope_in), abs(slope_out)) < min_speed:
                continue
            # c[k-1] + s_in (τ - (k-1)) = c[k+1] + s_out (τ - (k+1))  solved for the frame time τ
            tau = (c[k + 1] - c[k - 1] + slope_in * (k - 1) - slope_out * (k + 1)) / (slope_in - slope_out)
            events.append((float(np.clip(tau, k - 1, k + 1)) / fps, axis))
    return sorted(events)


MIN_SPEED_FRAC = 0.005   # least speed counted as motion: 0.005·S px/frame (BounceClick's least is ~0.05·S)


def video_impacts(video, fps):
    """Clip -> sorted list of (time_s, axis). Frame k shows time k/fps."""
    centroids, _ = disc_track(video)
    return impacts_from_track(centroids, fps, MIN_SPEED_FRAC * video_to_thwc(video).shape[1])


MOTION_TOL_FRAC = 1 / 16   # physical motion: the unfolded track within S/16 of a line (2 px at S = 32)


def unfolded(c, lo, hi):
    """One axis of a centroid track (T, no NaN) with its wall reflections undone: BounceClick's
    disc moves at constant velocity and reflects elastically at lo and hi, so the unfolded
    position is a straight line in time. Greedy: from frame 2 on, frame k keeps the current
    mapping or is mirrored about a wall, whichever lands nearer the line through the two
    frames before (no impact falls within two frames of either end)."""
    u, sign, offset = [c[0], c[1]], 1.0, 0.0                     # u = sign·c + offset
    for k in range(2, len(c)):
        guess = 2 * u[-1] - u[-2]
        options = [(sign, offset)] + [(-sign, offset + 2 * sign * wall) for wall in (lo, hi)]
        sign, offset = min(options, key=lambda m: abs(m[0] * c[k] + m[1] - guess))
        u.append(sign * c[k] + offset)
    return np.asarray(u)


def moves_physically(centroids, found, size) -> bool:
    """Whether a clip's disc moves as BounceClick's physics allows [ours]: one disc in every frame,
    and on each axis the unfolded track (`unfolded`, walls at r and S − r) within
    MOTION_TOL_FRAC·S of its least-squares line. A disc that jumps, stalls or turns away from a
    wall fails, whether or not its hits stay in sync with the sound."""
    if not found.all():
        return False
    from data import DISC_RADIUS_FRAC                # imported late: the detectors need no dataset
    lo, hi = DISC_RADIUS_FRAC * size, (1 - DISC_RADIUS_FRAC) * size
    frames = np.arange(len(centroids), dtype=np.float64)
    for axis in range(2):
        u = unfolded(centroids[:, axis], lo, hi)
        line = np.polyval(np.polyfit(frames, u, 1), frames)
        if np.abs(u - line).max() > MOTION_TOL_FRAC * size:
            return False
    return True


# ---------------------------------------------------------------------------------------------
# Audio: onsets and their pitch
# ---------------------------------------------------------------------------------------------
def rms_envelope(wave, sr, window_s=0.002) -> np.ndarray:
    """Trailing RMS over `window_s` at every sample: env[n] = rms(wave[n-W+1 .. n]). Trailing, so
    the envelope rises AT an onset rather than half a window before it."""
    x = np.asarray(wave, dtype=np.float64).reshape(-1)
    x = x - x.mean()                                 # a DC offset in generated audio is not sound
    win = max(1, round(window_s * sr))
    csum = np.concatenate([np.zeros(win), np.cumsum(x * x)])  # leading zeros: trailing window
    return np.sqrt(np.maximum(csum[win:] - csum[:-win], 0) / win)


def onset_pitch(wave, sr, start, window_s=0.016, fmin=100.0) -> float:
    """Pitch in Hz: the peak of a Hann-windowed, zero-padded FFT of `window_s` after sample `start`,
    refined by a parabola through the peak bin and its neighbours."""
    seg = np.asarray(wave, dtype=np.float64).reshape(-1)[start:start + round(window_s * sr)]
    if len(seg) < 8:
        return float("nan")
    n_fft = 4096                                     # zero padding: bins of sr/4096 ≈ 4 Hz at 16 kHz
    mag = np.abs(np.fft.rfft((seg - seg.mean()) * np.hanning(len(seg)), n_fft))
    mag[: int(np.ceil(fmin * n_fft / sr))] = 0       # ignore rumble / DC
    i = int(np.argmax(mag))
    if 0 < i < len(mag) - 1:
        a, b, c = np.log(mag[i - 1:i + 2] + 1e-12)
        i = i + 0.5 * (a - c) / (a - 2 * b + c) if (a - 2 * b + c) < 0 else i
    return float(i * sr / n_fft)


def audio_onsets(wave, sr, level=0.5, min_snr_db=10.0, refractory_s=0.05, max_range_db=40.0):
    """Waveform (N,) -> sorted list of (time_s, pitch_hz).

    Threshold [ours], chosen to be robust for generated audio: the noise floor is the median of the
    2 ms envelope (the clip is mostly between clicks), the peak its maximum, and the threshold sits
    `level` of the way from floor to peak IN DECIBELS (0.5: the geometric mean), so it adapts to the
    clip's loudness and to its noise. The floor is taken at most `max_range_db` under the peak: in a
    near-silent clip the geometric mean would sit far down, where Griffin-Lim's pre-echo (the STFT
    window smeared ahead of every click) crosses it early and its ringing adds onsets (RESULTS.md,
    "How were the earlier defaults found?", item 1). A clip whose peak is less than `min_snr_db`
    above its floor has no onsets (noise, or silence). An onset is an upward crossing; a crossing
    within `refractory_s` of the last onset is ignored (one click, one onset)."""
    env = rms_envelope(wave, sr)
    peak = env.max()
    floor = max(np.median(env), peak * 10 ** (-max_range_db / 20), 1e-12)  # silence has no log
    if peak <= 0 or 20 * np.log10(peak / floor) < min_snr_db:
        return []
    threshold = floor * (peak / floor) ** level
    above = env >= threshold
    crossings = np.nonzero(above[1:] & ~above[:-1])[0] + 1
    if above[0]:
        crossings = np.concatenate([[0], crossings])
    onsets, last = [], -np.inf
    for n in crossings:
        if n - last >= refractory_s * sr:
            onsets.append((n / sr, onset_pitch(wave, sr, int(n))))
            last = n
    return onsets


# ---------------------------------------------------------------------------------------------
# Matching and the sync metrics
# ---------------------------------------------------------------------------------------------
def match_events(video_events, audio_events, tol):
    """One-to-one greedy matching: all (video, audio) pairs with |Δt| ≤ tol, closest first, each
    event used at most once. Returns a list of (video_event, audio_event), sorted by video time."""
    candidates = sorted((abs(a[0] - v[0]), i, j) for i, v in enumerate(video_events)
                        for j, a in enumerate(audio_events) if abs(a[0] - v[0]) <= tol)
    used_v, used_a, pairs = set(), set(), []
    for _, i, j in candidates:
        if i not in used_v and j not in used_a:
            used_v.add(i), used_a.add(j)
            pairs.append((video_events[i], audio_events[j]))
    return sorted(pairs, key=lambda p: p[0][0])


def _wall_pitch(wall_pitch):
    if wall_pitch is None:
        from data import WALL_PITCH                  # imported late: the detectors need no dataset
        wall_pitch = WALL_PITCH
    return wall_pitch


def sync_metrics(pairs, fps, sr, tol=None, wall_pitch=None) -> dict:
    """Sync of many clips. pairs: iterable of (video, wave), video as in video_to_thwc, wave (N,).

    Counted over all clips together (events, not clips, are the unit):
      precision  matched audio onsets / audio onsets   (a click the video explains)
      recall     matched video impacts / video impacts (an impact the audio voices)
      f1, offsets of matched events audio − video in ms (median |.|, mean |.|, signed median),
      pitch_agreement  matched onsets whose pitch is nearer WALL_PITCH[axis] of their impact than
                       any other wall's pitch,
      disc_detection_rate  frames with exactly one disc / frames,
      physical_motion      clips whose disc moves as BounceClick's physics allows / clips
                           (`moves_physically`).
    tol defaults to one video frame, 1/fps. A ratio with a zero denominator is None, not 0."""
    tol = 1.0 / fps if tol is None else tol
    wall_pitch = _wall_pitch(wall_pitch)
    n_video = n_audio = n_frames = n_found = n_clips = n_physical = 0
    offsets, agree = [], []
    for video, wave in pairs:
        centroids, found = disc_track(video)
        size = video_to_thwc(video).shape[1]
        n_physical += moves_physically(centroids, found, size)
        v_events = impacts_from_track(centroids, fps, MIN_SPEED_FRAC * size)
        a_events = audio_onsets(wave, sr)
        matched = match_events(v_events, a_events, tol)
        n_clips, n_video, n_audio = n_clips + 1, n_video + len(v_events), n_audio + len(a_events)
        n_frames, n_found = n_frames + len(found), n_found + int(found.sum())
        for (tv, axis), (ta, pitch) in matched:
            offsets.append(1000.0 * (ta - tv))
            others = [p for a, p in wall_pitch.items() if a != axis]
            agree.append(all(abs(pitch - wall_pitch[axis]) < abs(pitch - p) for p in others))
    ratio = lambda a, b: a / b if b else None
    precision, recall = ratio(len(offsets), n_audio), ratio(len(offsets), n_video)
    f1 = ratio(2 * len(offsets), n_audio + n_video)  # = 2PR/(P+R), defined even when one is 0
    off = np.abs(np.asarray(offsets))
    return dict(precision=precision, recall=recall, f1=f1,
                median_abs_offset_ms=float(np.median(off)) if offsets else None,
                mean_abs_offset_ms=float(off.mean()) if offsets else None,
                median_offset_ms=float(np.median(offsets)) if offsets else None,
                pitch_agreement=ratio(sum(agree), len(agree)),
                disc_detection_rate=ratio(n_found, n_frames), physical_motion=ratio(n_physical, n_clips),
                tol_ms=1000.0 * tol, n_clips=n_clips, n_video_events=n_video,
                n_audio_events=n_audio, n_matched=len(offsets))


def shift_wave(wave, seconds, sr) -> np.ndarray:
    """Delay (seconds > 0) or advance (< 0) a waveform, zero-padding, same length."""
    wave = np.asarray(wave)
    n = round(seconds * sr)
    out = np.zeros_like(wave)
    if n >= 0:
        out[n:] = wave[:len(wave) - n]
    else:
        out[:n] = wave[-n:]
    return out


def calibration(cfg, n=50, seed=0, shifts_s=(0.040, -0.070), roundtrip_n=16) -> dict:
    """§8's calibration on n BounceClick clips at cfg.image_size: {"real", "shuffled",
    "shift_+40ms", ..., "mel_roundtrip"}, each a sync_metrics dict. Shuffled pairs the video of
    clip i with the audio of clip i+1 (i ≠ j, so chance level). The round trip scores the first
    `roundtrip_n` clips (0: skip it)."""
    from audio import frames_to_wave, wave_to_frames   # imported here: the detectors need neither
    from data import BounceClick
    ds = BounceClick(cfg, size=n, seed=seed, num_discs=1)
    clips = [ds.render(i)[:2] for i in range(n)]
    sr, fps = cfg.sample_rate, cfg.fps
    out = {"real": sync_metrics(clips, fps, sr),
           "shuffled": sync_metrics([(clips[i][0], clips[(i + 1) % n][1]) for i in range(n)], fps, sr)}
    for s in shifts_s:
        out[f"shift_{1000 * s:+.0f}ms"] = sync_metrics(
            [(v, shift_wave(w, s, sr)) for v, w in clips], fps, sr)
    if roundtrip_n:
        # the audio projection's round trip (Griffin-Lim is the slow part: one batch, first clips)
        waves = torch.stack([torch.as_tensor(w) for _, w in clips[:roundtrip_n]])
        rebuilt = frames_to_wave(wave_to_frames(waves, cfg), cfg).numpy()
        out["mel_roundtrip"] = sync_metrics(
            [(v, w) for (v, _), w in zip(clips, rebuilt)], fps, sr)
    return out

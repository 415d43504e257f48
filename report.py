"""
The page a researcher opens after `evaluate.py`: <out_dir>/report.html (PAPER.md §7, §8).

One static HTML file whose media live under <out_dir>/report/ behind relative links, so it opens from
file:// with no server and no network. There is no plotting library: every drawing is inline SVG
written by one small function here, and every video is an mp4 with its sound (data.write_mp4).
The page holds, top to bottom:

  1. Metrics   the sync table (F1, precision, recall, median |offset|, pitch agreement, one-disc
               share) of every part under the real-pairs ceiling and the shuffled-pairs chance; the
               autoencoder's PSNR and log-spectral distance; FVD / KVD / FAD or why they are null;
               the xmodal ε-MSE table. A part that did not run shows its reason, as eval.json does.
  2. Clips     for each of the first k held-out clips, side by side: real, AE reconstruction, joint
               sample, A2V, V2A, each a <video> with its sound and under it
                 - its sync timeline: the video's wall hits (sync.video_impacts) above the audio's
                   onsets (sync.audio_onsets) on one time axis 0..T/fps; pairs matched within one
                   frame (sync.match_events) joined by a line, the rest marked as misses; each hit
                   labelled with its wall's pitch (data.WALL_PITCH), each onset with its measured
                   pitch. Every mark carries its event time as data-t, for tests and for readers;
                 - the disc's x and y over time (sync.disc_track).
  3. Training  loss and learning rate per step (ae_log.csv, dit_log.csv), held-out PSNR
               (ae_heldout.csv), and the newest preview grids (preview/ae_*.png, preview/dit_*.png).
  4. Protocol  counts, split, seeds, sampler, steps, checkpoints (file, step, SHA-256), networks.

All of it [ours]. Usage, as evaluate.py does it:
    from report import write_report
    write_report("out", results, cfg, clips)     # -> "out/report.html"
"""
import csv
import glob
import html
import math
import os
import re
import shutil

import imageio.v3 as iio
import numpy as np

import sync
from data import WALL_PITCH, to_uint8_video, write_mp4

MEDIA = "report"                                # the media folder, beside report.html
# The clip columns: (key in `clips`, key in `results` whose reason shows when absent, heading)
CLIP_KINDS = (("real", None, "real"), ("reconstruction", "ae", "AE reconstruction"),
              ("joint", "gen", "joint sample (unconditioned)"), ("a2v", "a2v", "A2V: video from this audio"),
              ("v2a", "v2a", "V2A: audio from this video"))
PARTS = ("ae", "gen", "a2v", "v2a", "xmodal", "fvd")
SYNC_COLUMNS = (("F1", "f1"), ("precision", "precision"), ("recall", "recall"),
                ("median |offset| ms", "median_abs_offset_ms"), ("pitch agreement", "pitch_agreement"),
                ("one-disc frames", "disc_detection_rate"))
SYNC_ROWS = dict(real="real pairs (ceiling)", shuffled="shuffled real pairs (chance)",
                 reconstruction="reconstructions", projection_only="real video + projected audio",
                 generated="generated", generated_shuffled="generated, shuffled (chance)")
WALL_COLOUR = {"x": "#1f6fb4", "y": "#8e3fb0"}   # a hit's wall, and an onset whose pitch is nearest it
MISS, AGREE, DISAGREE, GREY = "#d62728", "#7a7a7a", "#e08a00", "#999999"
PLOT_POINTS = 800                               # a curve is thinned to at most this many points

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; color: #222; background: #fbfbfb; max-width: 1380px;
       margin: 20px auto; padding: 0 14px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; border-bottom: 1px solid #ddd;
     padding-bottom: 3px; margin-top: 30px; } h3 { font-size: 15px; margin: 18px 0 6px; }
table { border-collapse: collapse; background: #fff; margin: 6px 0 14px; }
th, td { border: 1px solid #ddd; padding: 3px 9px; text-align: left; vertical-align: top; }
table.num td:not(:first-child) { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f1f1f1; font-weight: 600; } tr.ref td { background: #eef3f8; }
.reason { color: #a12a2a; } .muted { color: #777; font-size: 12px; } code { font-size: 12px; }
.clip-row { display: grid; grid-template-columns: repeat(5, minmax(0, 1fr)); gap: 10px; margin-bottom: 8px; }
figure { margin: 0; background: #fff; border: 1px solid #ddd; padding: 6px; }
figcaption { font-weight: 600; font-size: 13px; margin-bottom: 4px; }
video { width: 100%; aspect-ratio: 1; image-rendering: pixelated; background: #000; display: block; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; margin-bottom: 12px; align-items: flex-start; }
.previews figure { flex: 1 1 600px; } .previews img { width: 100%; image-rendering: pixelated; }
svg { display: block; } svg.timeline, svg.track { width: 100%; height: auto; }
svg text { font: 9px system-ui, sans-serif; fill: #444; }
"""


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------
def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _num(v, digits=3) -> str:
    """A number for a table cell: '—' for None / NaN, else `digits` decimals."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _reason(part_result):
    """Why a part did not run (its "reason"), or None when it ran (evaluate.summary's rule)."""
    return part_result.get("reason") if isinstance(part_result, dict) else "not a result"


def _table(header, rows, classes=None, numeric=False) -> str:
    """An HTML table from a header list (None: no header row) and rows of already-escaped cells;
    a cell (markup, n) spans n columns, left-aligned; classes[i] is row i's CSS class or None;
    numeric right-aligns every column but the first."""
    head = "<tr>" + "".join(f"<th>{_esc(h)}</th>" for h in header) + "</tr>" if header else ""
    td = lambda c: (f"<td colspan={c[1]} style='text-align:left'>{c[0]}</td>" if isinstance(c, tuple)
                    else f"<td>{c}</td>")
    body = "".join(f"<tr{' class=' + repr(classes[i]) if classes and classes[i] else ''}>"
                   + "".join(map(td, row)) + "</tr>" for i, row in enumerate(rows))
    return f"<table{' class=num' if numeric else ''}>{head}{body}</table>"


def _key_values(d: dict) -> str:
    """A two-column table of a dict: lists as comma-separated items, None as '—'."""
    show = lambda v: "—" if v is None else ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else v
    return _table(None, [[_esc(k), _esc(show(v))] for k, v in d.items()])


def _agrees(axis, pitch) -> bool:
    """sync_metrics' pitch rule: the onset's pitch is nearer its hit's wall pitch than any other's."""
    return all(abs(pitch - WALL_PITCH[axis]) < abs(pitch - p) for a, p in WALL_PITCH.items() if a != axis)


def _nearest_wall(pitch):
    """The wall ("x"|"y") whose pitch is nearest `pitch` Hz, or None for an unmeasured pitch."""
    return None if math.isnan(pitch) else min(WALL_PITCH, key=lambda a: abs(WALL_PITCH[a] - pitch))


# ---------------------------------------------------------------------------------------------
# SVG drawings, one function each
# ---------------------------------------------------------------------------------------------
def _label_rows(xs, gap=22.0, rows=2):
    """For labels centred at xs (in order), the row each goes in (0 = nearest its mark), or None
    where every row already holds a label closer than `gap`: a crowded clip shows fewer labels."""
    last, out = [-1e9] * rows, []
    for x in xs:
        row = next((r for r in range(rows) if x - last[r] >= gap), None)
        if row is not None:
            last[row] = x
        out.append(row)
    return out


def timeline_svg(hits, onsets, pairs, duration, fps, width=260, height=108, attrs="") -> str:
    """The sync timeline of one clip as an <svg class="timeline">: hits [(time_s, axis)] as triangles
    on the upper lane, onsets [(time_s, pitch_hz)] as circles on the lower lane, a line per matched
    pair (grey when the onset's pitch names the hit's wall, orange when not), unmatched events
    hollow red under a ×. Frame ticks on the axis show the matching tolerance (one frame). Each mark
    is an element with data-kind="hit"|"onset", data-t (s), data-matched, and data-axis or data-pitch;
    its <title> states the same in words."""
    x0, x1 = 6.0, width - 6.0
    tx = lambda t: x0 + (x1 - x0) * min(max(t / duration, 0.0), 1.0)
    label_x = lambda x: min(max(x, 11.0), width - 11.0)        # a label at the clip's ends stays inside
    y_hit, y_onset, y_axis = 28, 60, 92
    matched_hits, matched_onsets = {id(h) for h, _ in pairs}, {id(o) for _, o in pairs}
    out = [f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
           f'<line x1="{x0}" y1="{y_axis}" x2="{x1}" y2="{y_axis}" stroke="#888"/>']
    for k in range(round(duration * fps) + 1):   # one tick per video frame: the tolerance's unit
        x = tx(k / fps)
        out.append(f'<line x1="{x:.1f}" y1="{y_axis}" x2="{x:.1f}" y2="{y_axis + 3}" stroke="#888"/>')
    for s in np.arange(0, duration + 1e-9, 0.5):
        out.append(f'<text x="{label_x(tx(s)):.1f}" y="{y_axis + 13}" text-anchor="middle">{s:g} s</text>')
    for h, o in pairs:                            # matched pairs first, under the marks
        colour = AGREE if _agrees(h[1], o[1]) else DISAGREE
        out.append(f'<line x1="{tx(h[0]):.1f}" y1="{y_hit + 5}" x2="{tx(o[0]):.1f}" y2="{y_onset - 5}" '
                   f'stroke="{colour}" stroke-width="1.5"/>')
    miss = lambda x, y: f'<text x="{x:.1f}" y="{y}" text-anchor="middle" style="fill:{MISS};font-size:11px">×</text>'
    for h, row in zip(hits, _label_rows([tx(t) for t, _ in hits])):
        (t, axis), matched = h, id(h) in matched_hits
        x, colour, wall_hz = tx(t), WALL_COLOUR.get(axis, GREY), WALL_PITCH.get(axis, float("nan"))
        out.append(f'<path class="mark" data-kind="hit" data-t="{t:.6f}" data-axis="{axis}" '
                   f'data-matched="{int(matched)}" '
                   f'd="M{x - 5:.1f},{y_hit - 5} L{x + 5:.1f},{y_hit - 5} L{x:.1f},{y_hit + 5} Z" '
                   f'fill="{colour if matched else "#fff"}" stroke="{colour if matched else MISS}" stroke-width="1.5">'
                   f'<title>hit {t:.3f} s, {axis} wall ({wall_hz:.0f} Hz)'
                   f'{"" if matched else ", no onset within one frame"}</title></path>')
        if row is not None:
            out.append(f'<text x="{label_x(x):.1f}" y="{y_hit - 11 - 9 * row}" '
                       f'text-anchor="middle">{wall_hz:.0f}</text>')
        out += [] if matched else [miss(x, y_hit + 17)]
    for o, row in zip(onsets, _label_rows([tx(t) for t, _ in onsets])):
        (t, pitch), matched = o, id(o) in matched_onsets
        x, colour = tx(t), WALL_COLOUR.get(_nearest_wall(pitch), GREY)
        out.append(f'<circle class="mark" data-kind="onset" data-t="{t:.6f}" data-pitch="{pitch:.1f}" '
                   f'data-matched="{int(matched)}" cx="{x:.1f}" cy="{y_onset}" r="4.5" '
                   f'fill="{colour if matched else "#fff"}" stroke="{colour if matched else MISS}" stroke-width="1.5">'
                   f'<title>onset {t:.3f} s, {pitch:.0f} Hz'
                   f'{"" if matched else ", no hit within one frame"}</title></circle>')
        if row is not None:
            out.append(f'<text x="{label_x(x):.1f}" y="{y_onset + 16 + 9 * row}" '
                       f'text-anchor="middle">{pitch:.0f}</text>')
        out += [] if matched else [miss(x, y_onset - 8)]
    return (f'<svg class="timeline" {attrs} viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
            + "".join(out) + "</svg>")


def track_svg(centroids, found, hits, duration, fps, size, width=260, height=64) -> str:
    """The disc's centroid x (blue) and y (purple) in pixels 0..S over time 0..T/fps, as an
    <svg class="track">: gaps where no single disc was found (a red tick at the bottom), faint
    vertical lines at the video's hits. centroids T×2 (NaN where not found), found bool T."""
    x0, x1, y0, y1 = 6.0, width - 6.0, 4.0, height - 8.0
    tx = lambda t: x0 + (x1 - x0) * min(max(t / duration, 0.0), 1.0)
    py = lambda v: y1 - (y1 - y0) * min(max(v / size, 0.0), 1.0)
    out = [f'<rect x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}" fill="#fff" stroke="#ddd"/>']
    for t, _ in hits:
        out.append(f'<line x1="{tx(t):.1f}" y1="{y0}" x2="{tx(t):.1f}" y2="{y1}" stroke="#ccc" '
                   f'stroke-dasharray="2,2"/>')
    for axis, colour in ((0, WALL_COLOUR["x"]), (1, WALL_COLOUR["y"])):
        path, pen_up = [], True
        for k, v in enumerate(centroids[:, axis]):
            if np.isnan(v):
                pen_up = True
                continue
            path.append(f'{"M" if pen_up else "L"}{tx(k / fps):.1f},{py(v):.1f}')
            pen_up = False
        out.append(f'<path d="{" ".join(path)}" fill="none" stroke="{colour}" stroke-width="1.4"/>')
    for k in np.nonzero(~np.asarray(found))[0]:
        x = tx(k / fps)
        out.append(f'<line x1="{x:.1f}" y1="{y1 + 1}" x2="{x:.1f}" y2="{y1 + 6}" stroke="{MISS}" stroke-width="2"/>')
    out.append(f'<text x="{x1 - 2}" y="{y0 + 9}" text-anchor="end"><tspan style="fill:{WALL_COLOUR["x"]}">x</tspan> '
               f'<tspan style="fill:{WALL_COLOUR["y"]}">y</tspan> px, 0..{size}</text>')
    return (f'<svg class="track" data-found="{int(np.sum(found))}" viewBox="0 0 {width} {height}" '
            f'xmlns="http://www.w3.org/2000/svg">' + "".join(out) + "</svg>")


def curve_svg(steps, series: dict, title, log_y=None, width=420, height=170) -> str:
    """Line plot of one or more series against the step, as an <svg class="curve" data-n=rows>; each
    point is also marked when a series has 20 or fewer.
    series: {name: list of floats, NaN skipped}; log_y None = logarithmic when every value is
    positive and they span more than 20×. Returns the SVG markup."""
    colours = ("#1f6fb4", "#d62728", "#2ca02c", "#8e3fb0")
    values = np.array([v for ys in series.values() for v in ys], dtype=float)
    values = values[np.isfinite(values)]
    steps = np.asarray(steps, dtype=float)
    x0, x1, y0, y1 = 52.0, width - 10.0, 22.0, height - 22.0
    head = (f'<svg class="curve" data-n="{len(steps)}" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
            f'<rect width="{width}" height="{height}" fill="#fff"/>'
            f'<text x="{x0}" y="13" style="font-size:11px;font-weight:600">{_esc(title)}</text>')
    if len(values) == 0 or len(steps) == 0:
        return head + f'<text x="{x0}" y="{height / 2}">no finite values</text></svg>'
    if log_y is None:
        log_y = values.min() > 0 and values.max() / values.min() > 20
    f = np.log10 if log_y else (lambda v: v)
    lo, hi = float(f(values.min())), float(f(values.max()))
    lo, hi = (lo - 0.5, hi + 0.5) if hi - lo < 1e-12 else (lo, hi)
    s_lo, s_hi = float(steps.min()), float(max(steps.max(), steps.min() + 1))
    px = lambda s: x0 + (x1 - x0) * (s - s_lo) / (s_hi - s_lo)
    py = lambda v: y1 - (y1 - y0) * (f(v) - lo) / (hi - lo)
    out = [f'<rect x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}" fill="none" stroke="#ccc"/>']
    for v in (values.min(), values.max()):        # the y range, at its ends
        out.append(f'<text x="{x0 - 4}" y="{py(v) + 3:.1f}" text-anchor="end">{v:.3g}</text>')
    out.append(f'<text x="{x0}" y="{height - 8}">step {s_lo:.0f}</text>'
               f'<text x="{x1}" y="{height - 8}" text-anchor="end">{s_hi:.0f}{" (log y)" if log_y else ""}</text>')
    stride = max(1, len(steps) // PLOT_POINTS)    # thin long logs: the page stays small
    for i, (name, ys) in enumerate(series.items()):
        ys = np.asarray(ys, dtype=float)
        pts = [f"{px(s):.1f},{py(v):.1f}" for s, v in zip(steps[::stride], ys[::stride])
               if np.isfinite(v) and (v > 0 or not log_y)]
        colour = colours[i % len(colours)]
        out.append(f'<polyline points="{" ".join(pts)}" fill="none" stroke="{colour}" stroke-width="1.3"/>')
        if len(pts) <= 20:                        # few points (held-out PSNR at each preview): mark each one
            out += [f'<circle cx="{p.split(",")[0]}" cy="{p.split(",")[1]}" r="2.5" fill="{colour}"/>' for p in pts]
        out.append(f'<text x="{x1 - 4}" y="{y0 + 11 + 11 * i}" text-anchor="end" '
                   f'style="fill:{colour}">{_esc(name)}</text>')
    return head + "".join(out) + "</svg>"


# ---------------------------------------------------------------------------------------------
# 1. Metrics
# ---------------------------------------------------------------------------------------------
def _sync_row(label, m) -> list:
    """One row of the sync table: the label, each metric of SYNC_COLUMNS, the event counts."""
    events = f"{m.get('n_video_events')} hits / {m.get('n_audio_events')} onsets / {m.get('n_matched')} matched"
    return ([_esc(label)] + [_num(m.get(key), 1 if key.endswith("_ms") else 3) for _, key in SYNC_COLUMNS]
            + [events])


def sync_table(results) -> str:
    """Every part's sync rows under the shared ceiling and chance rows; a part without sync gives
    one row with its reason. Returns an HTML table (or a note when no part scored sync)."""
    reference, rows = {}, []
    for part in (p for p in PARTS if p in results and p not in ("xmodal", "fvd")):
        r = results[part]
        why = _reason(r) or (r.get("sync_reason") if r.get("sync") is None else None)
        if why:                                   # the part did not run, or ran without sync (a folder)
            reason = (f'<span class="reason">{_esc(why)}</span>', len(SYNC_COLUMNS) + 1)  # across the row
            rows.append(([_esc(f"{part}: {'not run' if _reason(r) else 'no sync'}"), reason], None))
            continue
        for name, m in r["sync"].items():
            if name in ("real", "shuffled"):
                reference[name] = m               # the same held-out pairs in every part
            else:
                rows.append((_sync_row(f"{part}: {SYNC_ROWS.get(name, name)}", m), None))
    rows = [(_sync_row(SYNC_ROWS[name], m), "ref") for name, m in reference.items()] + rows
    if not rows:
        return '<p class="muted">No part scored sync.</p>'
    return _table(["pairs"] + [h for h, _ in SYNC_COLUMNS] + ["events"], [r for r, _ in rows],
                  [c for _, c in rows], numeric=True)


def ae_table(r) -> str:
    """The autoencoder's PSNR per modality and the log-spectral distance of its inverted audio."""
    if _reason(r):
        return f'<p class="reason">ae: not run: {_esc(_reason(r))}</p>'
    return _table(["clips", "PSNR video dB", "PSNR audio frames dB", "LSD dB", "LSD, projection alone dB"],
                  [[_num(r.get("n_clips"))] + [_num(r.get(k), 2) for k in ("psnr_video_db", "psnr_audio_frames_db",
                                                                          "lsd_db", "lsd_projection_only_db")]],
                  numeric=True)


def fvd_table(r) -> str:
    """FVD / KVD / FAD: the value with its counts and network, or null with the reason."""
    if _reason(r):
        return f'<p class="reason">fvd: not run: {_esc(_reason(r))}</p>'
    rows = []
    for name in ("fvd", "kvd", "fad"):
        e = r.get(name)
        if e is None:
            continue
        q = e.get("protocol") or {}
        value = (_num(e["value"], 4) if e.get("value") is not None
                 else f'<span class="reason">null: {_esc(e.get("reason"))}</span>')
        sha = f"<code>{_esc(q['network_sha256'][:16])}</code>" if q.get("network_sha256") else "—"
        rows.append([name.upper(), value, _num(q.get("n_real")), _num(q.get("n_generated")),
                     _esc(q.get("network_file") or "—"), sha])
    note = f'<p class="muted">{_esc(r["note"])}</p>' if r.get("note") else ""
    return _table(["metric", "value", "real", "generated", "network", "SHA-256 (first 16)"], rows) + note


def xmodal_table(r) -> str:
    """ε-MSE of each modality's planes with the other modality's planes from the same clip
    (matched) or from another clip (shuffled), per timestep; matched below shuffled means the
    denoiser reads the other modality."""
    if _reason(r):
        return f'<p class="reason">xmodal: not run: {_esc(_reason(r))}</p>'
    mse, cols = r["eps_mse"], ("audio_matched", "audio_shuffled", "video_matched", "video_shuffled")
    ratio = lambda who, i: (_num(mse[who + "_matched"][i] / mse[who + "_shuffled"][i], 3)
                            if mse[who + "_shuffled"][i] else "—")
    rows = [[str(t)] + [_num(mse[c][i], 4) for c in cols] + [ratio("audio", i), ratio("video", i)]
            for i, t in enumerate(r["timesteps"])]
    return _table(["t", "audio, matched video", "audio, shuffled video", "video, matched audio",
                   "video, shuffled audio", "audio ÷", "video ÷"], rows, numeric=True) + (
        '<p class="muted">÷: matched over shuffled; below 1, the denoiser reads the other modality.</p>')


def metrics_html(results, tol_ms) -> str:
    """The metrics section: the sync table, then the AE, FVD / KVD / FAD and xmodal tables."""
    parts = [f"<h2 id='metrics'>Metrics</h2><h3>Sync (BounceClick, matched within {tol_ms:.0f} ms)</h3>",
             sync_table(results)]
    for part, title, table in (("ae", "Autoencoder", ae_table), ("fvd", "FVD / KVD / FAD", fvd_table),
                               ("xmodal", "Cross-modal ε-MSE", xmodal_table)):
        parts.append(f"<h3>{title}</h3>" + (table(results[part]) if part in results
                                              else '<p class="muted">not in this evaluation (--what)</p>'))
    return "".join(parts)


# ---------------------------------------------------------------------------------------------
# 2. Clips
# ---------------------------------------------------------------------------------------------
def clip_figure(media_dir, i, kind, heading, video, wave, cfg) -> str:
    """One clip of one kind: its mp4 with sound (first frame as poster), sync timeline and disc
    track. Writes report/clip<i>_<kind>.mp4 and .png; returns the <figure> markup."""
    name = f"clip{i}_{kind}"
    write_mp4(os.path.join(media_dir, name + ".mp4"), video, wave, cfg)
    iio.imwrite(os.path.join(media_dir, name + ".png"), to_uint8_video(video)[0])
    wave = np.asarray(wave.detach().float().cpu() if hasattr(wave, "detach") else wave, dtype=np.float64)
    hits, onsets = sync.video_impacts(video, cfg.fps), sync.audio_onsets(wave, cfg.sample_rate)
    pairs = sync.match_events(hits, onsets, 1.0 / cfg.fps)
    centroids, found = sync.disc_track(video)
    duration = cfg.frames / cfg.fps
    return (f'<figure data-clip="{i}" data-part="{kind}"><figcaption>{_esc(heading)}</figcaption>'
            f'<video controls preload="none" src="{MEDIA}/{name}.mp4" poster="{MEDIA}/{name}.png"></video>'
            + timeline_svg(hits, onsets, pairs, duration, cfg.fps, attrs=f'data-clip="{i}" data-part="{kind}"')
            + track_svg(centroids, found, hits, duration, cfg.fps, cfg.image_size)
            + f'<div class="muted">{len(hits)} hits, {len(onsets)} onsets, {len(pairs)} matched; '
              f'one disc in {int(found.sum())}/{len(found)} frames</div></figure>')


def missing_figure(i, kind, heading, results, part) -> str:
    """A clip column with no clips: the part's reason from the results, or why there is none."""
    why = ("not run: " + _reason(results[part]) if part in results and _reason(results[part])
           else "not run: not in this evaluation (--what)" if part not in results
           else "no clip passed to the report")    # the part ran, but this clip was not handed over
    return (f'<figure data-clip="{i}" data-part="{kind}"><figcaption>{_esc(heading)}</figcaption>'
            f'<p class="reason">{_esc(why)}</p></figure>')


def clips_html(media_dir, results, cfg, clips) -> str:
    """The clip section: a legend, then for each held-out clip i a row of the CLIP_KINDS figures
    (a kind missing from `clips` shows its part's reason). Writes the clips' media."""
    k = max((len(v) for v in clips.values()), default=0)
    legend = ('<p class="muted">Timeline: ▼ video wall hits, labelled with their wall\'s pitch '
              f'(<span style="color:{WALL_COLOUR["x"]}">left/right {WALL_PITCH["x"]:.0f} Hz</span>, '
              f'<span style="color:{WALL_COLOUR["y"]}">top/bottom {WALL_PITCH["y"]:.0f} Hz</span>), above '
              '● audio onsets, labelled with their measured pitch and coloured by the nearest wall. A line joins '
              'a pair matched within one frame (one tick on the axis), '
              f'<span style="color:{DISAGREE}">orange</span> when the pitch names the other wall; '
              f'<span style="color:{MISS}">hollow red under ×</span>: unmatched. Below: the disc\'s x and y; red '
              'ticks mark frames without exactly one disc. A2V pairs the generated video with the clip\'s audio, '
              'V2A the clip\'s video with the generated audio; the joint sample belongs to no clip.</p>')
    split = results.get("protocol", {}).get("split", "BounceClick")
    if not split.startswith("BounceClick"):                   # the detectors know one disc and clicks
        legend += (f'<p class="reason">The held-out clips are {_esc(split)}, not BounceClick: the timelines\' '
                   'detectors look for one disc and wall clicks, so their marks mean little here.</p>')
    if k == 0:
        return "<h2 id='clips'>Clips</h2><p class='muted'>No clips were passed to the report.</p>"
    rows = []
    for i in range(k):
        cells = [clip_figure(media_dir, i, kind, heading, *clips[kind][i], cfg) if i < len(clips.get(kind, ()))
                 else missing_figure(i, kind, heading, results, part) for kind, part, heading in CLIP_KINDS]
        rows.append(f"<h3>Held-out clip {i}</h3><div class='clip-row'>{''.join(cells)}</div>")
    return "<h2 id='clips'>Clips</h2>" + legend + "".join(rows)


# ---------------------------------------------------------------------------------------------
# 3. Training
# ---------------------------------------------------------------------------------------------
def read_log(path):
    """A training CSV -> (header, {column: list of floats}), NaN where a cell is not a number;
    None when the file is missing or empty."""
    if not os.path.isfile(path):
        return None
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return None

    def number(s):
        try:
            return float(s)
        except ValueError:
            return float("nan")
    header, body = rows[0], [r for r in rows[1:] if len(r) == len(rows[0])]
    return header, {col: [number(r[j]) for r in body] for j, col in enumerate(header)}


def newest_preview(out_dir, stage):
    """The preview grid of the highest step, preview/<stage>_<step>.png, or None."""
    found = [(int(m.group(1)), p) for p in glob.glob(os.path.join(out_dir, "preview", f"{stage}_*.png"))
             if (m := re.fullmatch(rf"{stage}_(\d+)\.png", os.path.basename(p)))]
    return max(found)[1] if found else None


def log_plots(out_dir, name, title, missing) -> list:
    """Loss and learning-rate curves of one training CSV (columns named by its header row), or
    nothing (its name added to `missing`) when the file is absent."""
    log = read_log(os.path.join(out_dir, name))
    if log is None:
        missing.append(name)
        return []
    header, cols = log
    if "step" not in cols:
        return [f'<p class="muted">{_esc(name)}: no step column in {_esc(", ".join(header))}</p>']
    return [curve_svg(cols["step"], {col: cols[col]}, f"{title} {col} ({name})",
                      log_y=None if col == "loss" else False)        # a warm-up from 0 has no log
            for col in ("loss", "lr") if col in cols]


def training_html(out_dir, media_dir) -> str:
    """Curves of ae_log.csv and ae_heldout.csv, then dit_log.csv, and the newest preview grids
    (copied into the media folder); a missing file is named, not an error."""
    missing = []
    ae_plots = log_plots(out_dir, "ae_log.csv", "AE", missing)
    log = read_log(os.path.join(out_dir, "ae_heldout.csv"))
    if log is None:
        missing.append("ae_heldout.csv")
    elif "step" in log[1]:
        series = {c: log[1][c] for c in ("psnr_video_db", "psnr_audio_db") if c in log[1]}
        ae_plots.append(curve_svg(log[1]["step"], series, "AE held-out PSNR, dB (ae_heldout.csv)", log_y=False))
    dit_plots = log_plots(out_dir, "dit_log.csv", "STDiT", missing)
    images = []
    for stage in ("ae", "dit"):
        src = newest_preview(out_dir, stage)
        if src is None:
            missing.append(f"preview/{stage}_*.png")
            continue
        name = "preview_" + os.path.basename(src)
        shutil.copyfile(src, os.path.join(media_dir, name))
        caption = ("held-out originals above their reconstructions" if stage == "ae" else "EMA samples")
        images.append(f'<figure><figcaption>{_esc(os.path.basename(src))}: {caption}, each clip\'s mel frames '
                      f'under its video frames</figcaption><img src="{MEDIA}/{_esc(name)}" alt="{stage} preview">'
                      '</figure>')
    note = f'<p class="muted">Not found in {_esc(out_dir)}: {_esc(", ".join(missing))}</p>' if missing else ""
    row = lambda plots: f"<div class='plots'>{''.join(plots)}</div>" if plots else ""
    return ("<h2 id='training'>Training</h2>" + note + row(ae_plots) + row(dit_plots)
            + (f"<h3>Newest previews</h3><div class='plots previews'>{''.join(images)}</div>" if images else ""))


# ---------------------------------------------------------------------------------------------
# 4. Protocol
# ---------------------------------------------------------------------------------------------
def protocol_html(p) -> str:
    """Counts, split, sizes, sampler and seeds as key-value tables; checkpoints and networks as
    tables of file, step, SHA-256 (or the reason they are missing); every setting in a fold."""
    scalars = {k: p[k] for k in ("parts", "split", "n", "fvd_n", "frames", "fps", "resolution", "sample_rate",
                                 "clip_samples", "sync_tolerance_ms", "device", "torch", "out") if k in p}
    ck_cols = ("file", "step", "sha256", "trained_on", "train_seed", "ae_step", "latent_scale", "reason")
    cell = lambda v: "—" if v is None else _esc(v)
    ck_rows = [[_esc(stage)] + [cell(info.get(c)) for c in ck_cols]
               for stage, info in (p.get("checkpoints") or {}).items()]
    net_cols = ("flag", "file", "sha256", "reason")
    net_rows = [[_esc(kind)] + [cell(info.get(c)) for c in net_cols]
                for kind, info in (p.get("networks") or {}).items()]
    return ("<h2 id='protocol'>Protocol</h2><div class='plots'><div><h3>Evaluation</h3>" + _key_values(scalars)
            + "</div><div><h3>Generation</h3>" + _key_values(p.get("generation") or {}) + "</div></div>"
            + "<h3>Checkpoints</h3>" + _table(["stage", *ck_cols], ck_rows)
            + ("<h3>Feature networks</h3>" + _table(["kind", *net_cols], net_rows) if net_rows else "")
            + (f"<details><summary>Every setting</summary>{_key_values(p['settings'])}</details>"
               if p.get("settings") else ""))


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------
def write_report(out_dir: str, results: dict, cfg, clips: dict) -> str:
    """Write <out_dir>/report.html and its media under <out_dir>/report/ (replacing the media of an
    earlier report). results: evaluate.py's results dict, as in eval.json; clips: {"real",
    "reconstruction", "joint", "a2v", "v2a"} -> lists of (video 3×T×S×S in [-1, 1], wave (N,)),
    clip i of each kind belonging to held-out clip i (a kind may be absent). Returns the page's path."""
    media_dir = os.path.join(out_dir, MEDIA)
    for pattern in ("clip*_*.mp4", "clip*_*.png", "preview_*.png"):   # only what this module writes
        for stale in glob.glob(os.path.join(media_dir, pattern)):
            os.remove(stale)                      # a report of fewer clips leaves no old files behind
    os.makedirs(media_dir, exist_ok=True)
    p = results.get("protocol", {})
    tol_ms = p.get("sync_tolerance_ms", 1000.0 / cfg.fps)
    ck = p.get("checkpoints", {})
    steps = ", ".join(f"{s}.pt step {c['step']}" if c.get("step") is not None else f"{s}.pt missing"
                      for s, c in ck.items())
    intro = (f"<h1>ProAV-DiT evaluation report</h1><p class='muted'>{_esc(p.get('split', ''))}; "
             f"{cfg.frames} frames at {cfg.fps} fps, {cfg.image_size}² px, {cfg.sample_rate} Hz; "
             f"n = {_esc(p.get('n', '—'))}; {_esc(steps)}</p>"
             "<p><a href='#metrics'>Metrics</a> · <a href='#clips'>Clips</a> · <a href='#training'>Training</a> · "
             "<a href='#protocol'>Protocol</a></p>")
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>ProAV-DiT report</title>"
            f"<style>{CSS}</style></head><body>" + intro + metrics_html(results, tol_ms)
            + clips_html(media_dir, results, cfg, clips) + training_html(out_dir, media_dir)
            + protocol_html(p) + "</body></html>")
    path = os.path.join(out_dir, "report.html")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(path + ".tmp", path)               # a killed run never leaves half a page
    return path

"""
The page a researcher opens after `evaluate.py`: <out_dir>/report.html (PAPER.md §7, §8).

One static HTML file whose media live under <out_dir>/report/ behind relative links, so it opens from
file:// with no server and no network. There is no plotting library: every drawing is inline SVG
written by one small function here, and every video is an mp4 with its sound (data.write_mp4).
Every element, HTML or SVG, is built by `el`, which escapes the text and attribute values it is given.
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

The sync table's rows are owned here (sync_rows); evaluate.py prints them as text (sync_text).
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
from typing import NamedTuple, Optional

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
WALL_COLOUR = {"x": "#1f6fb4", "y": "#8e3fb0"}   # a hit's wall, and an onset whose pitch is nearest it
MISS, AGREE, DISAGREE, GREY = "#d62728", "#7a7a7a", "#e08a00", "#999999"
PLOT_POINTS = 800                               # a curve is thinned to at most this many points
SVG_NS = "http://www.w3.org/2000/svg"

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
# Markup: one element builder, which escapes whatever is not already markup
# ---------------------------------------------------------------------------------------------
class Markup(str):
    """Markup that `el` or `frag` built: it goes into other markup as is, never escaped again.
    Any other child (a reason, a file name, a number) is text, escaped where it goes in."""
    __slots__ = ()


VOID = frozenset({"meta", "img"})                                     # HTML elements with no end tag
SVG_LEAVES = frozenset({"rect", "line", "circle", "path", "polyline"})  # written <tag .../> when empty


def _attr(name, value) -> str:
    """One attribute: class_ -> class, data_t -> data-t, True -> bare name; the value escaped, in double quotes."""
    name = name.rstrip("_").replace("_", "-")
    return f" {name}" if value is True else f' {name}="{html.escape(str(value), quote=True)}"'


def _content(children) -> str:
    """Children as markup: Markup as is, lists / tuples flattened, None left out, the rest escaped as text."""
    out = []
    for c in children:
        if isinstance(c, Markup):
            out.append(c)
        elif isinstance(c, (list, tuple)):
            out.append(_content(c))
        elif c is not None:
            out.append(html.escape(str(c), quote=False))
    return "".join(out)


def el(tag, *children, **attrs) -> Markup:
    """The element <tag attrs>children</tag> as Markup; an attribute valued None or False is left out."""
    head = tag + "".join(_attr(k, v) for k, v in attrs.items() if v is not None and v is not False)
    inner = _content(children)
    if tag in VOID or (tag in SVG_LEAVES and not inner):
        return Markup(f"<{head}>" if tag in VOID else f"<{head}/>")
    return Markup(f"<{head}>{inner}</{tag}>")


def frag(*children) -> Markup:
    """Children side by side with no element around them, escaped as `el` escapes them."""
    return Markup(_content(children))


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------
def _num(v, digits=3) -> str:
    """A number for a table cell: '—' for None / NaN, else `digits` decimals."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _reason(part_result):
    """Why a part did not run (its "reason"), or None when it ran (evaluate.summary's rule)."""
    return part_result.get("reason") if isinstance(part_result, dict) else "not a result"


def _table(header, rows, classes=None, numeric=False) -> Markup:
    """An HTML table from a header list (None: no header row) and rows of cells, each text or
    Markup; a cell (content, n) spans n columns, left-aligned; classes[i] is row i's CSS class or
    None; numeric right-aligns every column but the first."""
    td = lambda c: el("td", c[0], colspan=c[1], style="text-align:left") if isinstance(c, tuple) else el("td", c)
    head = el("tr", [el("th", h) for h in header]) if header else None
    body = [el("tr", [td(c) for c in row], class_=classes[i] if classes else None) for i, row in enumerate(rows)]
    return el("table", head, body, class_="num" if numeric else None)


def _key_values(d: dict) -> Markup:
    """A two-column table of a dict: lists as comma-separated items, None as '—'."""
    show = lambda v: "—" if v is None else ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
    return _table(None, [[str(k), show(v)] for k, v in d.items()])


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


def _event_mark(tag, kind, t, matched, colour, title, data: dict, shape: dict) -> Markup:
    """One timeline event as an SVG shape with its <title>: filled when matched, hollow red when not."""
    return el(tag, el("title", title), class_="mark", data_kind=kind, data_t=f"{t:.6f}", **data,
              data_matched=int(matched), **shape, fill=colour if matched else "#fff",
              stroke=colour if matched else MISS, stroke_width=1.5)


def _miss(x, y) -> Markup:
    """The red × beside an event that matched nothing."""
    return el("text", "×", x=f"{x:.1f}", y=y, text_anchor="middle", style=f"fill:{MISS};font-size:11px")


def timeline_svg(hits, onsets, pairs, duration, fps, width=260, height=108, **attrs) -> Markup:
    """The sync timeline of one clip as an <svg class="timeline" attrs>: hits [(time_s, axis)] as
    triangles on the upper lane, onsets [(time_s, pitch_hz)] as circles on the lower lane, a line per
    matched pair (grey when the onset's pitch names the hit's wall, orange when not), unmatched events
    hollow red under a ×. Frame ticks on the axis show the matching tolerance (one frame). Each mark
    is an element with data-kind="hit"|"onset", data-t (s), data-matched, and data-axis or data-pitch;
    its <title> states the same in words."""
    x0, x1 = 6.0, width - 6.0
    tx = lambda t: x0 + (x1 - x0) * min(max(t / duration, 0.0), 1.0)
    label = lambda text, x, y: el("text", text, x=f"{min(max(x, 11.0), width - 11.0):.1f}", y=y,
                                  text_anchor="middle")        # a label at the clip's ends stays inside
    y_hit, y_onset, y_axis = 28, 60, 92
    matched_hits, matched_onsets = {id(h) for h, _ in pairs}, {id(o) for _, o in pairs}
    out = [el("rect", x=0, y=0, width=width, height=height, fill="#fff"),
           el("line", x1=x0, y1=y_axis, x2=x1, y2=y_axis, stroke="#888")]
    out += [el("line", x1=f"{tx(k / fps):.1f}", y1=y_axis, x2=f"{tx(k / fps):.1f}", y2=y_axis + 3, stroke="#888")
            for k in range(round(duration * fps) + 1)]          # one tick per video frame: the tolerance's unit
    out += [label(f"{s:g} s", tx(s), y_axis + 13) for s in np.arange(0, duration + 1e-9, 0.5)]
    out += [el("line", x1=f"{tx(h[0]):.1f}", y1=y_hit + 5, x2=f"{tx(o[0]):.1f}", y2=y_onset - 5,
               stroke=AGREE if _agrees(h[1], o[1]) else DISAGREE, stroke_width=1.5)
            for h, o in pairs]                                  # matched pairs first, under the marks
    for h, row in zip(hits, _label_rows([tx(t) for t, _ in hits])):
        (t, axis), matched, x = h, id(h) in matched_hits, tx(h[0])
        wall_hz = WALL_PITCH.get(axis, float("nan"))
        title = f"hit {t:.3f} s, {axis} wall ({wall_hz:.0f} Hz)" + ("" if matched else ", no onset within one frame")
        out += [_event_mark("path", "hit", t, matched, WALL_COLOUR.get(axis, GREY), title, dict(data_axis=axis),
                            dict(d=f"M{x - 5:.1f},{y_hit - 5} L{x + 5:.1f},{y_hit - 5} L{x:.1f},{y_hit + 5} Z")),
                None if row is None else label(f"{wall_hz:.0f}", x, y_hit - 11 - 9 * row),
                None if matched else _miss(x, y_hit + 17)]
    for o, row in zip(onsets, _label_rows([tx(t) for t, _ in onsets])):
        (t, pitch), matched, x = o, id(o) in matched_onsets, tx(o[0])
        title = f"onset {t:.3f} s, {pitch:.0f} Hz" + ("" if matched else ", no hit within one frame")
        out += [_event_mark("circle", "onset", t, matched, WALL_COLOUR.get(_nearest_wall(pitch), GREY), title,
                            dict(data_pitch=f"{pitch:.1f}"), dict(cx=f"{x:.1f}", cy=y_onset, r=4.5)),
                None if row is None else label(f"{pitch:.0f}", x, y_onset + 16 + 9 * row),
                None if matched else _miss(x, y_onset - 8)]
    return el("svg", out, class_="timeline", **attrs, viewBox=f"0 0 {width} {height}", xmlns=SVG_NS)


def track_svg(centroids, found, hits, duration, fps, size, width=260, height=64) -> Markup:
    """The disc's centroid x (blue) and y (purple) in pixels 0..S over time 0..T/fps, as an
    <svg class="track">: gaps where no single disc was found (a red tick at the bottom), faint
    vertical lines at the video's hits. centroids T×2 (NaN where not found), found bool T."""
    x0, x1, y0, y1 = 6.0, width - 6.0, 4.0, height - 8.0
    tx = lambda t: f"{x0 + (x1 - x0) * min(max(t / duration, 0.0), 1.0):.1f}"
    py = lambda v: f"{y1 - (y1 - y0) * min(max(v / size, 0.0), 1.0):.1f}"
    out = [el("rect", x=x0, y=y0, width=x1 - x0, height=y1 - y0, fill="#fff", stroke="#ddd")]
    out += [el("line", x1=tx(t), y1=y0, x2=tx(t), y2=y1, stroke="#ccc", stroke_dasharray="2,2") for t, _ in hits]
    for axis, colour in ((0, WALL_COLOUR["x"]), (1, WALL_COLOUR["y"])):
        path, pen_up = [], True
        for k, v in enumerate(centroids[:, axis]):
            if np.isnan(v):
                pen_up = True                     # a frame without one disc: the line breaks there
                continue
            path.append(f'{"M" if pen_up else "L"}{tx(k / fps)},{py(v)}')
            pen_up = False
        out.append(el("path", d=" ".join(path), fill="none", stroke=colour, stroke_width=1.4))
    out += [el("line", x1=tx(k / fps), y1=y1 + 1, x2=tx(k / fps), y2=y1 + 6, stroke=MISS, stroke_width=2)
            for k in np.nonzero(~np.asarray(found))[0]]
    out.append(el("text", el("tspan", "x", style=f"fill:{WALL_COLOUR['x']}"), " ",
                  el("tspan", "y", style=f"fill:{WALL_COLOUR['y']}"), f" px, 0..{size}",
                  x=x1 - 2, y=y0 + 9, text_anchor="end"))
    return el("svg", out, class_="track", data_found=int(np.sum(found)), viewBox=f"0 0 {width} {height}",
              xmlns=SVG_NS)


def curve_svg(steps, series: dict, title, log_y=None, width=420, height=170) -> Markup:
    """Line plot of one or more series against the step, as an <svg class="curve" data-n=rows>; each
    point is also marked when a series has 20 or fewer.
    series: {name: list of floats, NaN skipped}; log_y None = logarithmic when every value is
    positive and they span more than 20×. Returns the SVG markup."""
    colours = ("#1f6fb4", "#d62728", "#2ca02c", "#8e3fb0")
    values = np.array([v for ys in series.values() for v in ys], dtype=float)
    values = values[np.isfinite(values)]
    steps = np.asarray(steps, dtype=float)
    x0, x1, y0, y1 = 52.0, width - 10.0, 22.0, height - 22.0
    svg = lambda *body: el("svg", el("rect", width=width, height=height, fill="#fff"),
                           el("text", title, x=x0, y=13, style="font-size:11px;font-weight:600"), *body,
                           class_="curve", data_n=len(steps), width=width, height=height,
                           viewBox=f"0 0 {width} {height}", xmlns=SVG_NS)
    if len(values) == 0 or len(steps) == 0:
        return svg(el("text", "no finite values", x=x0, y=height / 2))
    if log_y is None:
        log_y = values.min() > 0 and values.max() / values.min() > 20
    f = np.log10 if log_y else (lambda v: v)
    lo, hi = float(f(values.min())), float(f(values.max()))
    lo, hi = (lo - 0.5, hi + 0.5) if hi - lo < 1e-12 else (lo, hi)
    s_lo, s_hi = float(steps.min()), float(max(steps.max(), steps.min() + 1))
    px = lambda s: x0 + (x1 - x0) * (s - s_lo) / (s_hi - s_lo)
    py = lambda v: y1 - (y1 - y0) * (f(v) - lo) / (hi - lo)
    out = [el("rect", x=x0, y=y0, width=x1 - x0, height=y1 - y0, fill="none", stroke="#ccc")]
    out += [el("text", f"{v:.3g}", x=x0 - 4, y=f"{py(v) + 3:.1f}", text_anchor="end")
            for v in (values.min(), values.max())]   # the y range, at its ends
    out += [el("text", f"step {s_lo:.0f}", x=x0, y=height - 8),
            el("text", f"{s_hi:.0f}{' (log y)' if log_y else ''}", x=x1, y=height - 8, text_anchor="end")]
    stride = max(1, len(steps) // PLOT_POINTS)    # thin long logs: the page stays small
    for i, (name, ys) in enumerate(series.items()):
        ys = np.asarray(ys, dtype=float)
        pts = [(f"{px(s):.1f}", f"{py(v):.1f}") for s, v in zip(steps[::stride], ys[::stride])
               if np.isfinite(v) and (v > 0 or not log_y)]
        colour = colours[i % len(colours)]
        out.append(el("polyline", points=" ".join(f"{x},{y}" for x, y in pts), fill="none", stroke=colour,
                      stroke_width=1.3))
        if len(pts) <= 20:                        # few points (held-out PSNR at each preview): mark each one
            out += [el("circle", cx=x, cy=y, r=2.5, fill=colour) for x, y in pts]
        out.append(el("text", name, x=x1 - 4, y=y0 + 11 + 11 * i, text_anchor="end", style=f"fill:{colour}"))
    return svg(out)


# ---------------------------------------------------------------------------------------------
# 1. Metrics: the sync rows (shared with evaluate.py's summary), then the tables
# ---------------------------------------------------------------------------------------------
class SyncColumn(NamedTuple):
    """A sync-table column: header on the page, header in text, key in a part's sync metrics, decimals."""
    header: str
    text: str
    key: str
    digits: int


class SyncRow(NamedTuple):
    """A sync-table row: label, metrics (None when the part has none), the reason why not, shared reference?"""
    label: str
    metrics: Optional[dict]
    reason: Optional[str]
    reference: bool


SYNC_COLUMNS = (SyncColumn("F1", "F1", "f1", 3), SyncColumn("precision", "prec", "precision", 3),
                SyncColumn("recall", "recall", "recall", 3),
                SyncColumn("median |offset| ms", "|off| ms", "median_abs_offset_ms", 1),
                SyncColumn("pitch agreement", "pitch", "pitch_agreement", 3),
                SyncColumn("one-disc frames", "1 disc", "disc_detection_rate", 3),
                SyncColumn("physical motion (clips)", "motion", "physical_motion", 3))
SYNC_ROWS = dict(real="real pairs (ceiling)", shuffled="shuffled real pairs (chance)",
                 reconstruction="reconstructions", projection_only="real video + projected audio",
                 generated="generated", generated_shuffled="generated, shuffled (chance)")
REFERENCE = ("real", "shuffled")                # the same held-out pairs in every part: shown once, first


def sync_rows(results) -> list:
    """The sync rows: ceiling and chance, then per part (PARTS order) its rows, or one row with its reason."""
    reference, rows = {}, []
    for part in (p for p in PARTS if p in results and p not in ("xmodal", "fvd")):
        r = results[part]
        why = _reason(r) or (r.get("sync_reason") if r.get("sync") is None else None)
        if why:                                   # the part did not run, or ran without sync (a folder)
            rows.append(SyncRow(f"{part}: {'not run' if _reason(r) else 'no sync'}", None, why, False))
            continue
        for name, m in (r.get("sync") or {}).items():
            if name in REFERENCE:
                reference[name] = m
            else:
                rows.append(SyncRow(f"{part}: {SYNC_ROWS.get(name, name)}", m, None, False))
    return [SyncRow(SYNC_ROWS[n], reference[n], None, True) for n in REFERENCE if n in reference] + rows


def _sync_cells(m: dict) -> list:
    """A row's metrics as the cells of SYNC_COLUMNS: '—' for None."""
    return [_num(m.get(c.key), c.digits) for c in SYNC_COLUMNS]


def sync_table(results) -> Markup:
    """Every part's sync rows under the shared ceiling and chance rows; a part without sync gives
    one row with its reason. Returns an HTML table (or a note when no part scored sync)."""
    rows = sync_rows(results)
    if not rows:
        return el("p", "No part scored sync.", class_="muted")
    events = lambda m: (f"{m.get('n_video_events')} hits / {m.get('n_audio_events')} onsets / "
                        f"{m.get('n_matched')} matched")
    cells = [[r.label, (el("span", r.reason, class_="reason"), len(SYNC_COLUMNS) + 1)] if r.metrics is None
             else [r.label, *_sync_cells(r.metrics), events(r.metrics)] for r in rows]
    return _table(["pairs", *(c.header for c in SYNC_COLUMNS), "events"], cells,
                  ["ref" if r.reference else None for r in rows], numeric=True)


def sync_text(results) -> list:
    """The sync rows that have metrics as the lines of a plain-text table, for evaluate.py's summary."""
    rows = [r for r in sync_rows(results) if r.metrics is not None]
    if not rows:
        return []
    tol = _num(results.get("protocol", {}).get("sync_tolerance_ms"), 0)
    head = [f"sync (tolerance {tol} ms)", *(c.text for c in SYNC_COLUMNS), "events v/a"]
    table = [head] + [[r.label, *_sync_cells(r.metrics),
                       f"{r.metrics.get('n_video_events')}/{r.metrics.get('n_audio_events')}"] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]
    # the label left-aligned, the rest right-aligned: each column is its widest cell plus two spaces
    return ["  " + line[0].ljust(widths[0]) + "".join(c.rjust(w + 2) for c, w in zip(line[1:], widths[1:]))
            for line in table]


def _not_run(part, r) -> Markup:
    """The line a table gives in its place when its part did not run."""
    return el("p", f"{part}: not run: {_reason(r)}", class_="reason")


def ae_table(r) -> Markup:
    """The autoencoder's PSNR per modality and the log-spectral distance of its inverted audio."""
    if _reason(r):
        return _not_run("ae", r)
    return _table(["clips", "PSNR video dB", "PSNR audio frames dB", "LSD dB", "LSD, projection alone dB"],
                  [[_num(r.get("n_clips"))] + [_num(r.get(k), 2) for k in ("psnr_video_db", "psnr_audio_frames_db",
                                                                          "lsd_db", "lsd_projection_only_db")]],
                  numeric=True)


def fvd_table(r) -> Markup:
    """FVD / KVD / FAD: the value with its counts and network, or null with the reason."""
    if _reason(r):
        return _not_run("fvd", r)
    rows = []
    for name in ("fvd", "kvd", "fad"):
        e = r.get(name)
        if e is None:
            continue
        q = e.get("protocol") or {}
        value = (_num(e["value"], 4) if e.get("value") is not None
                 else el("span", f"null: {e.get('reason')}", class_="reason"))
        sha = el("code", q["network_sha256"][:16]) if q.get("network_sha256") else "—"
        rows.append([name.upper(), value, _num(q.get("n_real")), _num(q.get("n_generated")),
                     q.get("network_file") or "—", sha])
    note = el("p", r["note"], class_="muted") if r.get("note") else None
    return frag(_table(["metric", "value", "real", "generated", "network", "SHA-256 (first 16)"], rows), note)


def xmodal_table(r) -> Markup:
    """ε-MSE of each modality's planes with the other modality's planes from the same clip
    (matched) or from another clip (shuffled), per timestep; matched below shuffled means the
    denoiser reads the other modality."""
    if _reason(r):
        return _not_run("xmodal", r)
    mse, cols = r["eps_mse"], ("audio_matched", "audio_shuffled", "video_matched", "video_shuffled")
    ratio = lambda who, i: (_num(mse[who + "_matched"][i] / mse[who + "_shuffled"][i], 3)
                            if mse[who + "_shuffled"][i] else "—")
    rows = [[str(t)] + [_num(mse[c][i], 4) for c in cols] + [ratio("audio", i), ratio("video", i)]
            for i, t in enumerate(r["timesteps"])]
    return frag(_table(["t", "audio, matched video", "audio, shuffled video", "video, matched audio",
                        "video, shuffled audio", "audio ÷", "video ÷"], rows, numeric=True),
                el("p", "÷: matched over shuffled; below 1, the denoiser reads the other modality.", class_="muted"))


def metrics_html(results, tol_ms) -> Markup:
    """The metrics section: the sync table, then the AE, FVD / KVD / FAD and xmodal tables."""
    parts = [el("h2", "Metrics", id="metrics"), el("h3", f"Sync (BounceClick, matched within {tol_ms:.0f} ms)"),
             sync_table(results)]
    for part, title, table in (("ae", "Autoencoder", ae_table), ("fvd", "FVD / KVD / FAD", fvd_table),
                               ("xmodal", "Cross-modal ε-MSE", xmodal_table)):
        parts += [el("h3", title), table(results[part]) if part in results
                  else el("p", "not in this evaluation (--what)", class_="muted")]
    return frag(parts)


# ---------------------------------------------------------------------------------------------
# 2. Clips
# ---------------------------------------------------------------------------------------------
def clip_figure(media_dir, i, kind, heading, video, wave, cfg) -> Markup:
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
    return el("figure", el("figcaption", heading),
              el("video", controls=True, preload="none", src=f"{MEDIA}/{name}.mp4", poster=f"{MEDIA}/{name}.png"),
              timeline_svg(hits, onsets, pairs, duration, cfg.fps, data_clip=i, data_part=kind),
              track_svg(centroids, found, hits, duration, cfg.fps, cfg.image_size),
              el("div", f"{len(hits)} hits, {len(onsets)} onsets, {len(pairs)} matched; "
                        f"one disc in {int(found.sum())}/{len(found)} frames", class_="muted"),
              data_clip=i, data_part=kind)


def missing_figure(i, kind, heading, results, part) -> Markup:
    """A clip column with no clips: the part's reason from the results, or why there is none."""
    why = ("not run: " + _reason(results[part]) if part in results and _reason(results[part])
           else "not run: not in this evaluation (--what)" if part not in results
           else "no clip passed to the report")    # the part ran, but this clip was not handed over
    return el("figure", el("figcaption", heading), el("p", why, class_="reason"), data_clip=i, data_part=kind)


def clips_legend(split) -> Markup:
    """What the timeline and track marks mean, and a warning when the clips are not BounceClick."""
    colour = lambda c, text: el("span", text, style=f"color:{c}")
    legend = el("p", "Timeline: ▼ video wall hits, labelled with their wall's pitch (",
                colour(WALL_COLOUR["x"], f"left/right {WALL_PITCH['x']:.0f} Hz"), ", ",
                colour(WALL_COLOUR["y"], f"top/bottom {WALL_PITCH['y']:.0f} Hz"), "), above ● audio onsets, "
                "labelled with their measured pitch and coloured by the nearest wall. A line joins a pair matched "
                "within one frame (one tick on the axis), ", colour(DISAGREE, "orange"),
                " when the pitch names the other wall; ", colour(MISS, "hollow red under ×"),
                ": unmatched. Below: the disc's x and y; red ticks mark frames without exactly one disc. A2V "
                "pairs the generated video with the clip's audio, V2A the clip's video with the generated audio; "
                "the joint sample belongs to no clip.", class_="muted")
    if split.startswith("BounceClick"):
        return legend
    return frag(legend, el("p", f"The held-out clips are {split}, not BounceClick: the timelines' detectors "
                                "look for one disc and wall clicks, so their marks mean little here.",
                           class_="reason"))                   # the detectors know one disc and clicks


def clips_html(media_dir, results, cfg, clips) -> Markup:
    """The clip section: a legend, then for each held-out clip i a row of the CLIP_KINDS figures
    (a kind missing from `clips` shows its part's reason). Writes the clips' media."""
    k = max((len(v) for v in clips.values()), default=0)
    if k == 0:
        return frag(el("h2", "Clips", id="clips"), el("p", "No clips were passed to the report.", class_="muted"))
    rows = []
    for i in range(k):
        cells = [clip_figure(media_dir, i, kind, heading, *clips[kind][i], cfg) if i < len(clips.get(kind, ()))
                 else missing_figure(i, kind, heading, results, part) for kind, part, heading in CLIP_KINDS]
        rows += [el("h3", f"Held-out clip {i}"), el("div", cells, class_="clip-row")]
    return frag(el("h2", "Clips", id="clips"),
                clips_legend(results.get("protocol", {}).get("split", "BounceClick")), rows)


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
        return [el("p", f"{name}: no step column in {', '.join(header)}", class_="muted")]
    return [curve_svg(cols["step"], {col: cols[col]}, f"{title} {col} ({name})",
                      log_y=None if col == "loss" else False)        # a warm-up from 0 has no log
            for col in ("loss", "lr") if col in cols]


def heldout_plots(out_dir, missing) -> list:
    """The AE's held-out PSNR per modality (ae_heldout.csv), or nothing (named in `missing`)."""
    log = read_log(os.path.join(out_dir, "ae_heldout.csv"))
    if log is None:
        missing.append("ae_heldout.csv")
        return []
    if "step" not in log[1]:
        return []
    series = {c: log[1][c] for c in ("psnr_video_db", "psnr_audio_db") if c in log[1]}
    return [curve_svg(log[1]["step"], series, "AE held-out PSNR, dB (ae_heldout.csv)", log_y=False)]


def sync_curve_plots(out_dir, missing) -> list:
    """The held-out sync-F1 that train.py checks during the DiT stage (dit_sync.csv), against the
    step and against the wall-clock seconds since the stage began, or nothing (named in `missing`)."""
    log = read_log(os.path.join(out_dir, "dit_sync.csv"))
    if log is None:
        missing.append("dit_sync.csv")
        return []
    cols = log[1]
    series = {c: cols[c] for c in ("joint_f1", "a2v_f1", "v2a_f1") if c in cols}
    return [curve_svg(cols[x], series, f"STDiT held-out sync-F1 by {label} (dit_sync.csv)", log_y=False)
            for x, label in (("step", "step"), ("seconds", "seconds of training")) if x in cols and series]


def preview_figures(out_dir, media_dir, missing) -> list:
    """The newest AE and DiT preview grids, copied into the media folder, as figures (else named in `missing`)."""
    figures = []
    for stage in ("ae", "dit"):
        src = newest_preview(out_dir, stage)
        if src is None:
            missing.append(f"preview/{stage}_*.png")
            continue
        name = "preview_" + os.path.basename(src)
        shutil.copyfile(src, os.path.join(media_dir, name))
        caption = ("held-out originals above their reconstructions" if stage == "ae" else "EMA samples")
        figures.append(el("figure", el("figcaption", f"{os.path.basename(src)}: {caption}, each clip's mel frames "
                                                     "under its video frames"),
                          el("img", src=f"{MEDIA}/{name}", alt=f"{stage} preview")))
    return figures


def training_html(out_dir, media_dir) -> Markup:
    """Curves of ae_log.csv and ae_heldout.csv, then dit_log.csv and dit_sync.csv, and the newest preview grids
    (copied into the media folder); a missing file is named, not an error."""
    missing = []
    ae_plots = log_plots(out_dir, "ae_log.csv", "AE", missing) + heldout_plots(out_dir, missing)
    dit_plots = log_plots(out_dir, "dit_log.csv", "STDiT", missing) + sync_curve_plots(out_dir, missing)
    images = preview_figures(out_dir, media_dir, missing)
    row = lambda plots: el("div", plots, class_="plots") if plots else None
    return frag(el("h2", "Training", id="training"),
                el("p", f"Not found in {out_dir}: {', '.join(missing)}", class_="muted") if missing else None,
                row(ae_plots), row(dit_plots),
                [el("h3", "Newest previews"), el("div", images, class_="plots previews")] if images else None)


# ---------------------------------------------------------------------------------------------
# 4. Protocol
# ---------------------------------------------------------------------------------------------
def protocol_html(p) -> Markup:
    """Counts, split, sizes, sampler and seeds as key-value tables; checkpoints and networks as
    tables of file, step, SHA-256 (or the reason they are missing); every setting in a fold."""
    scalars = {k: p[k] for k in ("parts", "split", "n", "fvd_n", "frames", "fps", "resolution", "sample_rate",
                                 "clip_samples", "sync_tolerance_ms", "device", "torch", "out") if k in p}
    ck_cols = ("file", "step", "sha256", "trained_on", "train_seed", "ae_step", "latent_scale", "reason")
    cell = lambda v: "—" if v is None else str(v)
    ck_rows = [[stage] + [cell(info.get(c)) for c in ck_cols] for stage, info in (p.get("checkpoints") or {}).items()]
    net_cols = ("flag", "file", "sha256", "reason")
    net_rows = [[kind] + [cell(info.get(c)) for c in net_cols] for kind, info in (p.get("networks") or {}).items()]
    return frag(el("h2", "Protocol", id="protocol"),
                el("div", el("div", el("h3", "Evaluation"), _key_values(scalars)),
                   el("div", el("h3", "Generation"), _key_values(p.get("generation") or {})), class_="plots"),
                el("h3", "Checkpoints"), _table(["stage", *ck_cols], ck_rows),
                [el("h3", "Feature networks"), _table(["kind", *net_cols], net_rows)] if net_rows else None,
                el("details", el("summary", "Every setting"), _key_values(p["settings"]))
                if p.get("settings") else None)


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------
def intro_html(p, cfg) -> Markup:
    """The title, the held-out set and sizes, the checkpoints' steps, and links to the sections."""
    steps = ", ".join(f"{s}.pt step {c['step']}" if c.get("step") is not None else f"{s}.pt missing"
                      for s, c in p.get("checkpoints", {}).items())
    links = [el("a", title, href=f"#{title.lower()}") for title in ("Metrics", "Clips", "Training", "Protocol")]
    return frag(el("h1", "ProAV-DiT evaluation report"),
                el("p", f"{p.get('split', '')}; {cfg.frames} frames at {cfg.fps} fps, {cfg.image_size}² px, "
                        f"{cfg.sample_rate} Hz; n = {p.get('n', '—')}; {steps}", class_="muted"),
                el("p", [(" · " if j else None, a) for j, a in enumerate(links)]))


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
    head = el("head", el("meta", charset="utf-8"), el("title", "ProAV-DiT report"), el("style", Markup(CSS)))
    body = el("body", intro_html(p, cfg), metrics_html(results, tol_ms), clips_html(media_dir, results, cfg, clips),
              training_html(out_dir, media_dir), protocol_html(p))
    page = "<!DOCTYPE html>" + el("html", head, body, lang="en")
    path = os.path.join(out_dir, "report.html")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(path + ".tmp", path)               # a killed run never leaves half a page
    return path

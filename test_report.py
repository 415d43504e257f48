"""Tests for report.py: the page written after an evaluation, read back with html.parser (no browser).

The clips are BounceClick held-out items and simple variants of them (audio 40 ms late, a dropped
click, another clip's video), so every timeline has known events; the results dict is shaped like
evaluate.py's, its sync figures computed by sync.sync_metrics on those clips."""
import os
import re
import subprocess
from html.parser import HTMLParser

import imageio_ffmpeg
import numpy as np
import pytest
import torch

import sync
from config import get_config
from data import BounceClick, save_grid
from report import Markup, el, frag, sync_rows, sync_text, write_report

K = 2                                             # held-out clips on the page
DELAY_S = 0.04                                    # the "reconstruction" variant's audio delay
V2A_REASON = "no dit.pt in out: run python train.py --stage dit"
FVD_REASON = "video feature network: no file given. Pass a TorchScript file with --i3d PATH"
AE_LOG = ["step", "loss", "l1_video", "l1_audio", "mse_video", "mse_audio", "kl", "lr", "grad_norm", "clips_per_s"]


def decode(path, stream):
    """One stream of an mp4 decoded to raw bytes by the ffmpeg imageio-ffmpeg ships: "a" as mono
    float32 at 16 kHz (test_train.audio_seconds' recipe), "v" as RGB24 frames."""
    args = (["-f", "f32le", "-ac", "1", "-ar", "16000"] if stream == "a" else ["-f", "rawvideo", "-pix_fmt", "rgb24"])
    return subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", path, "-map", f"0:{stream}"]
                          + args + ["-"], capture_output=True, check=True).stdout


class Page(HTMLParser):
    """What the tests read from the page: media links, timeline marks, curves, text per figure."""

    def __init__(self, text):
        super().__init__()
        self.media, self.marks, self.curves, self.figures, self.text = [], [], [], {}, []
        self.svg, self.figure = None, None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("video", "img"):
            self.media += [a[k] for k in ("src", "poster") if k in a]
        elif tag == "figure" and "data-clip" in a:
            self.figure = (int(a["data-clip"]), a["data-part"])
            self.figures[self.figure] = ""
        elif tag == "svg":
            self.svg = a
            if a.get("class") == "curve":
                self.curves.append(int(a["data-n"]))
        elif "data-kind" in a and self.svg is not None and self.svg.get("class") == "timeline":
            self.marks.append(dict(clip=int(self.svg["data-clip"]), part=self.svg["data-part"], **a))

    def handle_endtag(self, tag):
        if tag == "svg":
            self.svg = None
        elif tag == "figure":
            self.figure = None

    def handle_data(self, data):
        self.text.append(data)
        if self.figure is not None:
            self.figures[self.figure] += data


def drop_first_click(wave, events, sr):
    """The wave with its first click silenced (the click rings for 0.12 s)."""
    wave = wave.clone()
    t = events[0][0]
    wave[int(t * sr) - 80:int((t + 0.13) * sr)] = 0
    return wave


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A report of K clips with reconstruction / joint / A2V columns and V2A not run; training logs
    for ae and dit (ae_heldout.csv missing); two AE preview grids and one DiT grid."""
    cfg = get_config("tiny")
    sr, out = cfg.sample_rate, str(tmp_path_factory.mktemp("out"))
    ds = BounceClick(cfg, size=K + 1, seed=1000)
    items = [ds[i] for i in range(K + 1)]
    real = [(it["video"], it["wave"]) for it in items[:K]]
    clips = dict(real=real,
                 reconstruction=[(v, torch.from_numpy(sync.shift_wave(w.numpy(), DELAY_S, sr))) for v, w in real],
                 joint=[(v, drop_first_click(w, ds.events(i), sr)) for i, (v, w) in enumerate(real)],
                 a2v=[(items[i + 1]["video"], w) for i, (_, w) in enumerate(real)])   # another clip's video
    metrics = lambda pairs: sync.sync_metrics(pairs, cfg.fps, sr)
    shuffled = lambda pairs: [(pairs[i][0], pairs[(i + 1) % len(pairs)][1]) for i in range(len(pairs))]
    ref = dict(real=metrics(real), shuffled=metrics(shuffled(real)))
    scored = lambda kind: dict(generated=metrics(clips[kind]), generated_shuffled=metrics(shuffled(clips[kind])), **ref)
    fvd_proto = dict(n_real=None, n_generated=None, split="held out", network_file=None, network_sha256=None)
    results = {
        "protocol": dict(parts=["ae", "gen", "a2v", "v2a", "xmodal", "fvd"], out=os.path.join(out, "eval.json"),
                         split="BounceClick seed 1000, clips 0..1", n=K, fvd_n=K, frames=cfg.frames, fps=cfg.fps,
                         resolution=cfg.image_size, sample_rate=sr, clip_samples=cfg.clip_samples,
                         checkpoints={"ae": dict(file="out/ae.pt", sha256="ab" * 32, step=1000, reason=None,
                                                 trained_on="BounceClick", train_seed=0),
                                      "dit": dict(file="out/dit.pt", reason=V2A_REASON)},
                         generation=dict(source="sampled", sampler="ddim", steps=50, eta=0.0, seed=7),
                         networks={}, sync_tolerance_ms=100.0, device="cpu", torch=torch.__version__),
        "ae": dict(reason=None, n_clips=K, psnr_video_db=31.234, psnr_audio_frames_db=40.5, lsd_db=3.21,
                   lsd_projection_only_db=2.5, sync_reason=None,
                   sync=dict(reconstruction=metrics(clips["reconstruction"]), projection_only=metrics(real), **ref)),
        "gen": dict(reason=None, n_clips=K, sync=scored("joint")),
        "a2v": dict(reason=None, n_clips=K, sync=scored("a2v")),
        "v2a": {"value": None, "reason": V2A_REASON},
        "xmodal": dict(reason=None, n_clips=K, timesteps=[100, 300],
                       eps_mse=dict(audio_matched=[0.1111, 0.2], audio_shuffled=[0.3, 0.4],
                                    video_matched=[0.5, 0.6], video_shuffled=[0.7, 0.8])),
        "fvd": dict(n_requested=K, note="2 clips per set",
                    fvd=dict(value=None, reason=FVD_REASON, protocol=fvd_proto),
                    kvd=dict(value=None, reason=FVD_REASON, protocol=fvd_proto),
                    fad=dict(value=12.5, reason=None, protocol=dict(fvd_proto, n_real=K, n_generated=K))),
    }
    for name, header in (("ae_log.csv", AE_LOG), ("dit_log.csv", ["step", "loss", "lr", "grad_norm", "clips_per_s"])):
        with open(os.path.join(out, name), "w") as f:
            f.write(",".join(header) + "\n")
            for step in range(1, 6):
                f.write(",".join(str(step) if c == "step" else f"{1.0 / step:.4g}" for c in header) + "\n")
    os.makedirs(os.path.join(out, "preview"))
    for name in ("ae_000010.png", "ae_000200.png", "dit_000100.png"):
        save_grid(os.path.join(out, "preview", name), real[0][0][:, :2])
    path = write_report(out, results, cfg, clips)
    with open(path, encoding="utf-8") as f:
        page = Page(f.read())
    return dict(out=out, cfg=cfg, clips=clips, results=results, page=page, path=path)


def test_every_media_link_is_a_relative_file(run):
    page = run["page"]
    assert len([m for m in page.media if m.endswith(".mp4")]) == K * 4      # real, reconstruction, joint, a2v
    for src in page.media:
        assert "://" not in src and not os.path.isabs(src), src
        assert os.path.isfile(os.path.join(run["out"], src)), src
    assert run["path"] == os.path.join(run["out"], "report.html")


def test_each_mp4_has_the_clips_sound_and_frames(run):
    cfg = run["cfg"]
    for src in (m for m in run["page"].media if m.endswith(".mp4")):
        path = os.path.join(run["out"], src)
        seconds = len(decode(path, "a")) / 4 / 16000
        assert abs(seconds - cfg.clip_samples / cfg.sample_rate) < 0.03, (src, seconds)
        frames = len(decode(path, "v")) / (cfg.image_size ** 2 * 3)
        assert frames == cfg.frames, (src, frames)


def test_timeline_marks_are_the_detectors_events(run):
    cfg, clips, marks = run["cfg"], run["clips"], run["page"].marks
    assert {(m["clip"], m["part"]) for m in marks} == {(i, kind) for i in range(K) for kind in clips}
    for i in range(K):
        for kind, pairs in clips.items():
            video, wave = pairs[i]
            hits, onsets = sync.video_impacts(video, cfg.fps), sync.audio_onsets(wave.numpy(), cfg.sample_rate)
            mine = [m for m in marks if (m["clip"], m["part"]) == (i, kind)]
            got_hits = [(float(m["data-t"]), m["data-axis"]) for m in mine if m["data-kind"] == "hit"]
            got_onsets = [float(m["data-t"]) for m in mine if m["data-kind"] == "onset"]
            assert [a for _, a in got_hits] == [a for _, a in hits], (i, kind)
            assert np.allclose([t for t, _ in got_hits], [t for t, _ in hits], atol=1e-3), (i, kind)
            assert np.allclose(got_onsets, [t for t, _ in onsets], atol=1e-3), (i, kind)
            n_pairs = len(sync.match_events(hits, onsets, 1.0 / cfg.fps))
            assert sum(m["data-matched"] == "1" for m in mine) == 2 * n_pairs, (i, kind)
    # each column shows its own clip: the late audio's onsets sit DELAY_S after the real ones
    onset_times = lambda kind: [float(m["data-t"]) for m in marks
                                if (m["clip"], m["part"], m["data-kind"]) == (0, kind, "onset")]
    assert np.allclose(np.subtract(onset_times("reconstruction"), onset_times("real")), DELAY_S, atol=1e-3)
    # the dropped click leaves its hit unmatched: a miss
    missed = [m for m in marks if (m["part"], m["data-kind"], m["data-matched"]) == ("joint", "hit", "0")]
    assert len(missed) == K


def test_parts_not_run_show_their_reasons(run):
    page, text = run["page"], " ".join(run["page"].text)
    for i in range(K):
        assert V2A_REASON in page.figures[(i, "v2a")]
        assert "not run" in page.figures[(i, "v2a")]
    assert "v2a: not run" in text and FVD_REASON in text
    assert "12.5000" in text and "0.1111" in text and "31.23" in text        # FAD, xmodal, PSNR
    f1 = run["results"]["ae"]["sync"]["real"]["f1"]
    assert f"{f1:.3f}" in text and "real pairs (ceiling)" in text and "shuffled real pairs (chance)" in text
    assert "ab" * 32 in text and "out/ae.pt" in text                          # the checkpoint's SHA-256


def test_training_curves_and_newest_previews(run):
    page, text = run["page"], " ".join(run["page"].text)
    assert page.curves == [5, 5, 5, 5]               # ae loss, ae lr, dit loss, dit lr: one point per row
    assert "ae_heldout.csv" in text                  # named as not found
    previews = [m for m in page.media if "preview" in m]
    assert sorted(os.path.basename(m) for m in previews) == ["preview_ae_000200.png", "preview_dit_000100.png"]


def test_a_second_report_replaces_the_first(run):
    """Fewer clips and a results dict with no parts: no stale media, and each part says why."""
    real = run["clips"]["real"][:1]
    write_report(run["out"], {"protocol": run["results"]["protocol"]}, run["cfg"], {"real": real})
    media = sorted(os.listdir(os.path.join(run["out"], "report")))
    assert media == ["clip0_real.mp4", "clip0_real.png", "preview_ae_000200.png", "preview_dit_000100.png"]
    with open(os.path.join(run["out"], "report.html"), encoding="utf-8") as f:
        page = Page(f.read())
    assert "not in this evaluation" in page.figures[(0, "reconstruction")]


def test_el_escapes_text_and_attributes_once():
    """Text and attribute values are escaped; markup built by el goes in as is, never escaped twice."""
    inner = el("b", "a < b & c")
    out = el("p", 'say "hi" <now>', inner, None, [el("i", 1.5)], class_="note", data_t='1"2 & <3>',
             stroke_width=1.5, controls=True, hidden=None)
    assert isinstance(out, Markup)
    assert out == ('<p class="note" data-t="1&quot;2 &amp; &lt;3&gt;" stroke-width="1.5" controls>'
                   'say "hi" &lt;now&gt;<b>a &lt; b &amp; c</b><i>1.5</i></p>')
    assert el("div", out).count("&amp;amp;") == 0 and el("div", out) == "<div>" + out + "</div>"
    assert str(el("line", x1=0)) == '<line x1="0"/>' and str(el("video")) == "<video></video>"
    assert str(el("img", src="a&b.png")) == '<img src="a&amp;b.png">'
    assert str(frag(inner, "<", None)) == "<b>a &lt; b &amp; c</b>&lt;"
    page = Page(str(out))                          # read back, the values are the ones given
    assert "".join(page.text) == 'say "hi" <now>a < b & c1.5'


def test_sync_rows_and_text():
    """Ceiling and chance first, then part by part; a part without sync carries its reason in
    sync_rows and is left out of sync_text, whose columns line up."""
    m = lambda f1, n_audio: dict(f1=f1, precision=0.5, recall=1.0, median_abs_offset_ms=None, pitch_agreement=1.0,
                                 disc_detection_rate=float("nan"), physical_motion=0.75, n_video_events=4,
                                 n_audio_events=n_audio, n_matched=2)
    ref = dict(real=m(1.0, 4), shuffled=m(0.25, 4))
    results = {"protocol": dict(sync_tolerance_ms=100.0),
               "ae": dict(reason=None, sync=None, sync_reason="a folder of clips"),
               "gen": dict(reason=None, sync=dict(generated=m(0.5, 3), generated_shuffled=m(0.125, 12), **ref)),
               "v2a": {"value": None, "reason": V2A_REASON}, "fvd": {"value": None, "reason": FVD_REASON}}
    rows = sync_rows(results)
    assert [r.label for r in rows] == ["real pairs (ceiling)", "shuffled real pairs (chance)", "ae: no sync",
                                       "gen: generated", "gen: generated, shuffled (chance)", "v2a: not run"]
    assert [r.reference for r in rows] == [True, True, False, False, False, False]
    assert [r.reason for r in rows] == [None, None, "a folder of clips", None, None, V2A_REASON]
    assert rows[0].metrics is ref["real"] and rows[2].metrics is None and rows[3].metrics["f1"] == 0.5
    lines = sync_text(results)
    cells = [[(c.group(), c.start(), c.end()) for c in re.finditer(r"\S+(?: \S+)*", line)] for line in lines]
    assert [c[0][0] for c in cells] == ["sync (tolerance 100 ms)", "real pairs (ceiling)",
                                        "shuffled real pairs (chance)", "gen: generated",
                                        "gen: generated, shuffled (chance)"]
    assert [c[0] for c in cells[3][1:]] == ["0.500", "0.500", "1.000", "—", "1.000", "—", "0.750", "4/3"]
    assert cells[4][-1][0] == "4/12" and cells[0][-1][0] == "events v/a"
    widths = [max(len(c[j][0]) for c in cells) for j in range(9)]     # each column: its widest cell + 2
    right_edges = list(np.cumsum([2 + widths[0]] + [w + 2 for w in widths[1:]]))
    for line, c in zip(lines, cells):               # the label left-aligned, the rest right-aligned
        assert c[0][1] == 2 and [end for _, _, end in c[1:]] == right_edges[1:], line
        assert len(line) == right_edges[-1], line
    assert sync_text({"protocol": {}, "v2a": results["v2a"]}) == []

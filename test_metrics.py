"""Tests for metrics.py (PAPER.md §7): the Fréchet and kernel distances against closed forms, a
stand-in TorchScript feature network, missing networks as null + reason, networks that do not fit as
one line, and distribution_metrics, the function evaluate.py's command line runs."""
import json
import math
import warnings

import numpy as np
import pytest
import torch

import metrics as ev
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


@pytest.mark.parametrize("name", ["tiny_i3d.pt2", "tiny_i3d.pt"])     # told apart by content, not suffix
def test_feature_net_exported_pt2(tmp_path, name):
    path = tmp_path / name
    torch.export.save(torch.export.export(TinyVideoNet(), (torch.zeros(2, 3, 4, 224, 224),)), str(path))
    feats = ev.FeatureNet(path, "video")(torch.zeros(2, 3, 4, 16, 16))
    assert feats.shape == (2, 8)


class NotFlat(torch.nn.Module):
    def forward(self, x):                                    # B×... -> B×16×k: not B×D
        return x.reshape(x.shape[0], 16, -1)


def unfit_network_files(folder) -> dict:
    """Files a new user might pass as a feature network, none of which fits: {case: path}.
    "text": a text file; "weights": torch.save of a state dict; "input": a scripted Linear(3, 2),
    which cannot take a clip; "output": a scripted network that returns B×16×k, not B×D."""
    paths = {case: str(folder / f"{case}.{'txt' if case == 'text' else 'pt'}")
             for case in ("text", "weights", "input", "output")}
    with open(paths["text"], "w") as f:
        f.write("an I3D network, I promise\n")
    torch.save(torch.nn.Linear(3, 2).state_dict(), paths["weights"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), paths["input"])
        torch.jit.save(torch.jit.script(NotFlat()), paths["output"])
    return paths


@pytest.fixture(scope="module")
def unfit_files(tmp_path_factory):
    return unfit_network_files(tmp_path_factory.mktemp("unfit"))


# what each case's line says, and for each kind the shapes it names
UNFIT = {"text": "not a zip archive", "weights": "a torch.save file", "input": "fails on the input it is given",
         "output": "must return B×D features (here 2×D), got 2×16×"}
GIVEN = {"video": "B×3×T×224×224 float in [-1, 1], RGB (here 2×3×16×224×224)", "audio": "B×N float waveform (here 2×25600)"}


@pytest.mark.parametrize("kind", ["video", "audio"])
@pytest.mark.parametrize("case", list(UNFIT))
def test_unfit_network_stops_with_one_line(unfit_files, kind, case):
    """Checked on a batch of 2 clips when loaded with a config: one line naming the flag, the file
    and what was expected, no traceback (SystemExit, raised from None); no assert, so `python -O`
    keeps the check."""
    path = unfit_files[case]
    with pytest.raises(SystemExit) as e:
        ev.load_networks({kind: path}, "cpu", get_config("tiny"))
    line = str(e.value)
    print(line)
    assert line.startswith(f"{ev.FLAGS[kind]} {path}: ") and UNFIT[case] in line and "\n" not in line
    assert e.value.__cause__ is None and (e.value.__context__ is None or e.value.__suppress_context__)
    if case == "input":
        assert GIVEN[kind] in line and "mat1 and mat2 shapes cannot be multiplied" in line
    if case in ("text", "weights"):
        assert "neither a TorchScript file (torch.jit.save) nor a torch.export archive" in line


def test_fewer_than_two_clips_is_null_with_reason(tiny_net_file):
    nets = ev.load_networks({"video": str(tiny_net_file)})
    one = [(torch.zeros(1, 3, 4, 16, 16), torch.zeros(1, 100))]
    two = [(torch.rand(2, 3, 4, 16, 16), torch.zeros(2, 100))]
    out = ev.distribution_metrics(nets, two, one, get_config("tiny"), "test")
    for name in ("fvd", "kvd"):
        assert out[name]["value"] is None and "at least 2 clips" in out[name]["reason"]


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

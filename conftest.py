"""Shared pytest setup, and the helpers more than one test file uses (`from conftest import ...`)."""
import pytest
import torch

# A toy model and data set, shared by test_evaluate.py and test_train.py: every stage runs in
# seconds on two CPU cores. No previews and no held-out sync check (their Griffin-Lim inversions
# would cost more than the training): `toy_run` turns both on once, and a test that reads them
# turns them on after TOY.
TOY = ["--ae_channels", "32", "--dit_width", "64", "--dit_depth", "2", "--batch_size", "2",
       "--train_clips", "8", "--eval_clips", "2", "--log_every", "1", "--preview_every", "-1",
       "--sync_every", "-1"]
# toy_run's previews and sync check: once, at the end of each stage, one clip for one step.
TOY_CHECKS = ["--preview_every", "0", "--sync_every", "0", "--sync_clips", "1", "--sync_steps", "1"]
TOY_STEPS = 2    # training steps of each stage in `toy_run`; the evaluate tests check the checkpoints say so


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The tests run many small ops; on 2 cores a second torch thread adds contention, not speed,
    the more so when other processes load the machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory):
    """The out_dir of one toy run of train.py: ae.pt and dit.pt, TOY_STEPS steps each at TOY with its
    previews and sync check (TOY_CHECKS), as a str.

    Trained once per session for every test that needs checkpoints. Tests may add files to it
    (sample.py's samples/, evaluate.py's eval.json and report) and read back only what they just
    wrote; none replaces or removes a checkpoint. A test that must change the run works on a copy.
    """
    import train                                  # here, not at the top: most test files never need it
    out = str(tmp_path_factory.mktemp("toy_run"))
    for stage in ("ae", "dit"):
        train.main(["--stage", stage, "--max_steps", str(TOY_STEPS), "--out_dir", out] + TOY + TOY_CHECKS)
    return out


def randomized(model, seed=0):
    """`model` in eval mode with 0.05·N(0, 1) added to every weight from a generator seeded `seed`:
    the zero-initialised layers (adaLN-Zero gates, output projections) then carry signal too, so
    the output is not trivially 0 and a test can tell one code path from another. A test that
    trains it calls `.train()` on the result."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


def gaussian_velocity(sd):
    """The exact v̂ of x0 ~ N(0, sd²·I) on the flow path: x_t ~ N(0, (1−t)²·sd² + t²), and
    E[ε − x0 | x_t] = (t − (1−t)·sd²) / ((1−t)²·sd² + t²) · x_t. The model sees 1000·t."""
    def model(x, t_model, y=None):
        t = (t_model / 1000.0).double().reshape(-1, *[1] * (x.dim() - 1))
        var = (1 - t) ** 2 * sd ** 2 + t ** 2
        return ((t - (1 - t) * sd ** 2) / var * x.double()).to(x.dtype)
    return model


def gaussian_shortcut(sd, shift):
    """The exact shortcut velocity of x0 ~ N(0, sd²·I) on the flow path shifted by `shift`: the ODE
    maps x_t to x_r = (σ_r/σ_t)·x_t with σ_t² = (1−t)²·sd² + t², so the average velocity over a step
    of size δ from t (r = warp(unwarp(t) − δ)) is (1 − σ_r/σ_t)/(t − r)·x_t; δ = 0 (or step None) is
    `gaussian_velocity`'s. Levels per clip `B` or per modality `B×2` (a plane at t = 0 gets 0)."""
    from model import VIDEO_PLANES
    sigma = lambda t: ((1 - t) ** 2 * sd ** 2 + t ** 2).sqrt()          # noqa: E731

    def model(x, t_model, y=None, step=None):
        t = t_model.double() / 1000.0
        t = t[:, None].expand(-1, x.shape[2]) if t.dim() == 1 else torch.where(VIDEO_PLANES, t[:, :1], t[:, 1:])
        delta = torch.zeros(x.shape[0], dtype=torch.float64) if step is None else step.double() / 1000.0
        u = t / (shift - (shift - 1) * t)                                # the grid's level before the shift
        below = (u - delta[:, None]).clamp(min=0.0)
        r = shift * below / (1 + (shift - 1) * below)
        average = (1 - sigma(r) / sigma(t)) / (t - r).clamp(min=1e-300)
        speed = (t - (1 - t) * sd ** 2) / sigma(t) ** 2                 # the instantaneous velocity's factor
        factor = torch.where(delta[:, None] > 0, average, speed).masked_fill(t == 0, 0.0)
        return (factor.reshape(x.shape[0], 1, -1, *[1] * (x.dim() - 3)) * x.double()).to(x.dtype)
    return model

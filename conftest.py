"""Shared pytest setup."""
import pytest
import torch

# A toy model and data set, shared by test_evaluate.py and test_train.py: every stage runs in
# seconds on two CPU cores.
TOY = ["--ae_channels", "32", "--dit_width", "64", "--dit_depth", "2", "--batch_size", "2",
       "--train_clips", "8", "--eval_clips", "2", "--log_every", "1", "--preview_every", "0"]
TOY_STEPS = 2    # training steps of each stage in `toy_run`; the evaluate tests check the checkpoints say so


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The tests run many small ops; on 2 cores a second torch thread adds contention, not speed
    (measured ~10x slower when other processes load the machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory):
    """The out_dir of one toy run of train.py: ae.pt and dit.pt, TOY_STEPS steps each at TOY, as a str.

    Trained once per session for every test that needs checkpoints. Tests may add files to it
    (sample.py's samples/, evaluate.py's eval.json and report) and read back only what they just
    wrote; none replaces or removes a checkpoint. A test that must change the run works on a copy.
    """
    import train                                  # here, not at the top: most test files never need it
    out = str(tmp_path_factory.mktemp("toy_run"))
    for stage in ("ae", "dit"):
        train.main(["--stage", stage, "--max_steps", str(TOY_STEPS), "--out_dir", out] + TOY)
    return out

"""Shared pytest setup."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The tests run many small ops; on 2 cores a second torch thread adds contention, not speed
    (measured ~10x slower when other processes load the machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

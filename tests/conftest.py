"""Shared fixtures."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """One intra-op thread: on shared 2-core machines a second thread on tiny tensors only spins
    against the other processes (and can slow a test several times over)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

"""Shared fixtures."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs one worker per core, at most 4) each worker gets
    its share of the cores: two workers with a thread per core each would oversubscribe a
    2-core machine. Subprocesses the tests start (DDP ranks, the CLI) inherit the share."""
    import os

    from learndrop.machine import usable_cpus

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        share = max(1, (usable_cpus() or 1) // workers)
        torch.set_num_threads(share)
        os.environ.setdefault("OMP_NUM_THREADS", str(share))


@pytest.fixture
def one_thread():
    """One intra-op thread: on shared 2-core machines a second thread on tiny tensors only spins
    against the other processes (and can slow a test several times over)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def fashion16():
    """Fashion-MNIST at 16x16: 640 training images (10 batches of 64, augmented), 500 test."""
    import os

    from learndrop.data import load_dataset, make_loaders

    if not os.path.isdir("/usr/share/datasets/fashion-mnist") and not os.environ.get(
            "LEARNDROP_DATA"):
        pytest.skip("Fashion-MNIST not installed (make test installs dataset-fashion-mnist)")
    data = load_dataset("fashion-mnist", None, 16, 640, 0, 500)
    return make_loaders(data, 64, "cpu", 0)


@pytest.fixture(scope="session")
def trained_resnet20(fashion16):
    """ResNet-20 after 2 epochs on ``fashion16`` (SGD 0.05, momentum): the model, its last 4
    training batches and the test loader. Shared: deep-copy the model before changing it."""
    from collections import deque

    from torch import nn

    from learndrop.models import create_model

    train_loader, test_loader = fashion16
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    train_loader.set_epoch(0)
    model = create_model("resnet20", num_classes=10, in_channels=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    recent = deque(maxlen=4)
    for _ in range(2):
        for x, y in train_loader:
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
            recent.append((x, y))
    torch.set_num_threads(threads)
    return model, list(recent), test_loader


@pytest.fixture
def benchmark_script():
    """Load ``benchmarks/<name>.py`` as the module ``<name>_script`` (the scripts are not a
    package); registered in ``sys.modules`` because dataclasses look their module up there."""
    loaded = []

    def load(name: str):
        module_name = f"{name}_script"
        spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        loaded.append(module_name)
        spec.loader.exec_module(module)
        return module

    yield load
    for module_name in loaded:
        sys.modules.pop(module_name, None)

"""Data-parallel training: 2-process gloo runs on CPU under torchrun, on tiny Fashion-MNIST."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from learndrop import load_slim
from learndrop.data.loader import DeviceLoader
from learndrop.distributed import strip_option

needs_data = pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist") and not os.environ.get("LEARNDROP_DATA"),
    reason="Fashion-MNIST not installed (make test installs dataset-fashion-mnist)",
)

# One thread per process: 2 processes on 2 cores (torchrun sets this too).
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

TINY = ["--model", "resnet20", "--dataset", "fashion-mnist", "--subset", "256",
        "--test-subset", "200", "--image-size", "16", "--batch-size", "32", "--lr", "0.05",
        "--change-threshold", "0.9", "--max-drops-per-check", "2", "--max-drop-cost", "inf",
        "--quiet", "--no-plots"]

# Loaded by every Python process of the run (PYTHONPATH): in the torchrun workers (RANK set) it
# saves what only a test needs at exit, every rank's final model state; the trainer's own files
# come from rank 0 alone.
HOOK = """
import atexit, os
if os.environ.get("RANK") is not None:
    import torch
    import learndrop.train.builder as builder

    models = []
    build = builder.build_model
    builder.build_model = lambda *a, **k: models.append(build(*a, **k)) or models[-1]

    @atexit.register
    def save():
        if models:
            state = {k: v.cpu() for k, v in models[0].state_dict().items()}
            torch.save(state, os.path.join(os.environ["HOOK_OUT"], f"state{os.environ['RANK']}.pt"))
"""


def test_shards_partition_the_single_process_batches():
    x = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    y = torch.arange(50)
    kw = dict(train=True, augment=True, mean=[0.5] * 3, std=[0.25] * 3, seed=3)
    one = list(DeviceLoader(x, y, 8, **kw))
    shards = [list(DeviceLoader(x, y, 4, rank=r, world_size=2, **kw)) for r in range(2)]
    assert len(one) == len(shards[0]) == len(shards[1]) == 6
    for i, (xb, yb) in enumerate(one):
        # Rank r holds the positions r, r+2, ... of the global batch: same samples, same crops.
        assert torch.equal(torch.stack([shards[0][i][1], shards[1][i][1]], 1).reshape(-1), yb)
        merged = torch.stack([shards[0][i][0], shards[1][i][0]], 1).reshape(xb.shape)
        assert torch.equal(merged, xb)
    test = [DeviceLoader(x[:7], y[:7], 4, train=False, augment=False, mean=[0.5] * 3,
                         std=[0.25] * 3, rank=r, world_size=2) for r in range(2)]
    seen = torch.cat([yb for loader in test for _, yb in loader])
    assert sorted(seen.tolist()) == list(range(7))  # evaluation: every test sample once


def test_sync_hook_makes_the_global_decision():
    from learndrop import LearnDrop
    from learndrop.models import create_model

    model = create_model("resnet20", num_classes=10, in_channels=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.zeros(2, 1, 8, 8)
    method = LearnDrop(model, optimizer, x)
    method.step(batch=(x, torch.zeros(2, dtype=torch.long)))
    seen = []
    method.sync = lambda entries: seen.append(entries) or ["drop:layer2.1"]  # rank 0 decided
    events = method.check()  # the first check is warm-up: locally nothing is chosen
    assert seen == [[]] and [(e.unit, e.action) for e in events] == [("layer2.1", "drop")]
    assert isinstance(model.layer2[1], torch.nn.Identity)


def test_strip_option():
    argv = ["train", "--nproc", "2", "--epochs", "1", "--nproc=3"]
    assert strip_option(argv, "--nproc") == ["train", "--epochs", "1"]


@needs_data
def test_two_processes_train_in_lockstep(tmp_path):
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(HOOK)
    # Keep the caller's PYTHONPATH after the hook: the workers import the learndrop under test.
    path = os.pathsep.join(filter(None, [str(tmp_path / "hook"), os.environ.get("PYTHONPATH")]))
    env = {**ENV, "PYTHONPATH": path, "HOOK_OUT": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "learndrop", "train", "--nproc", "2", "--epochs", "4",
         "--out", str(tmp_path / "run"), *TINY],
        env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("epoch 4/4:") == 1  # only rank 0 logs ...
    assert done.stdout.count('"units_total"') == 1  # ... and prints the summary

    a, b = (torch.load(tmp_path / f"state{r}.pt") for r in (0, 1))
    assert a.keys() == b.keys()  # the same units dropped on both ranks
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical parameters and buffers

    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == [
        "config.json", "last.ckpt", "metrics.jsonl", "model.pt", "summary.json"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["units_dropped"] > 0
    # 8 global batches of 32 per epoch: the ledger counts the samples of both ranks.
    assert summary["samples_seen"] == 4 * 256
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4] and rows[-1]["step"] == 4 * 8
    model = load_slim(run / "model.pt")
    assert sum(p.numel() for p in model.parameters()) == summary["params_final"]
    assert model.state_dict().keys() == a.keys()
    assert all(torch.equal(model.state_dict()[k], a[k]) for k in a)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_data
def test_a_hung_rank_makes_the_other_fail_not_wait_forever(tmp_path):
    """Rank 1 stops (SIGSTOP: alive, silent) after epoch 1; rank 0 must give up after the
    timeout with a one-line error instead of waiting forever."""
    out = tmp_path / "r"
    env = {**ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2"}
    env.pop("LEARNDROP_DEBUG", None)  # the one-line error, not a traceback
    argv = [sys.executable, "-m", "learndrop", "train", "--epochs", "30", "--out", str(out),
            "--dist-timeout", "5", *TINY]
    procs = [subprocess.Popen(argv, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in (0, 1)]
    try:
        deadline = time.monotonic() + 240
        while not (out / "metrics.jsonl").exists():
            assert time.monotonic() < deadline and procs[0].poll() is None, "no epoch finished"
            time.sleep(0.2)
        os.kill(procs[1].pid, signal.SIGSTOP)
        stopped = time.monotonic()
        _, err = procs[0].communicate(timeout=120)
        waited = time.monotonic() - stopped
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
            p.wait()
    assert procs[0].returncode != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "learndrop: error:" in lines[0], err[-2000:]
    # Either of gloo's two wordings of a timeout, depending on which side notices first.
    assert re.search(r"rank 0: lost the other processes \((Timed out|Application timeout)",
                     lines[0]), lines[0]
    assert "--dist-timeout" in lines[0]
    assert waited < 90
    assert not (out / "summary.json").exists()

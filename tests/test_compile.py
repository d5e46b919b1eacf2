"""``--compile``: a compiled run drops what an eager one drops, compiling once per structure."""

import os

import pytest
import torch
from torch._dynamo import lookup_backend

from learndrop.train import TrainConfig, train

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(
        not os.path.isdir("/usr/share/datasets/fashion-mnist")
        and not os.environ.get("LEARNDROP_DATA"),
        reason="Fashion-MNIST not installed (make test installs dataset-fashion-mnist)",
    ),
]


def small(tmp_path, name, **overrides) -> TrainConfig:
    values = dict(model="resnet20", dataset="fashion-mnist", epochs=4, subset=256,
                  test_subset=200, batch_size=32, lr=0.05, image_size=16,
                  out=str(tmp_path / name), quiet=True, plots=False,
                  method_options={"change_threshold": 0.9, "max_drops_per_check": 2,
                                  "max_drop_cost": float("inf")})  # drop, never freeze
    values.update(overrides)
    return TrainConfig(**values)


class CountingBackend:
    """A dynamo backend that records the graphs it compiles (module-level: picklable)."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.graphs: list[int] = []

    def __call__(self, gm, example_inputs):
        self.graphs.append(len(gm.graph.nodes))
        return self.backend(gm, example_inputs)


def compare_with_eager(tmp_path, monkeypatch, backend: str) -> None:
    eager = train(small(tmp_path, "eager"), log=lambda s: None)
    # Count the trainer's torch.compile calls and the graphs dynamo hands to the backend.
    calls = []
    counting_backend = CountingBackend(lookup_backend(backend))
    graphs = counting_backend.graphs
    real_compile = torch.compile

    def counting_compile(model, **kwargs):
        calls.append(model)
        return real_compile(model, backend=counting_backend, **kwargs)

    monkeypatch.setattr(torch, "compile", counting_compile)
    compiled = train(small(tmp_path, "compiled", compile=True), log=lambda s: None)

    def key(summary):
        return [(d["unit"], d["step"]) for d in summary["drops"]]

    assert key(compiled) == key(eager) and compiled["units_dropped"] > 0
    change_steps = sorted({d["step"] for d in compiled["drops"]})
    total_steps = 4 * 8
    # Built once at the start and once after every structural change ...
    assert len(calls) == 1 + len(change_steps)
    # ... and each structure that ran a step was compiled exactly once (a drop after the last
    # step is never run): no recompilation per step.
    assert len(graphs) == 1 + sum(1 for s in change_steps if s < total_steps)
    assert change_steps[0] < total_steps  # the rebuild was exercised


def test_compiled_run_drops_the_same_units_as_an_eager_one(tmp_path, monkeypatch):
    # aot_eager: dynamo's tracing and guards and AOTAutograd's joint graph, as with the default
    # backend, but eager kernels instead of inductor's C++ code generation, which costs one to
    # two minutes per structure on 2 CPU cores (see the inductor test below).
    compare_with_eager(tmp_path, monkeypatch, "aot_eager")


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("LEARNDROP_TEST_INDUCTOR"),
                    reason="set LEARNDROP_TEST_INDUCTOR=1: inductor on CPU takes minutes")
def test_inductor_compiled_run_drops_the_same_units(tmp_path, monkeypatch):
    compare_with_eager(tmp_path, monkeypatch, "inductor")

"""FLOPs accounting: forward and backward FLOPs actually executed during training.

Each distinct network configuration (which units are dropped, frozen or skipped) is measured
once with ``torch.utils.flop_counter.FlopCounterMode``, on meta tensors shaped like a real batch:
the model's own code runs, but no memory is allocated, no arithmetic is done and no BatchNorm
statistic moves. The cost per sample is multiplied by the samples trained in that configuration;
the full network's cost over the same samples is the reference.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from learndrop.meta import meta_batch, meta_call
from learndrop.surgery import replace_module
from learndrop.units import Unit

__all__ = ["Cost", "FlopsLedger", "measure_cost", "unit_costs"]


@dataclass(frozen=True)
class Cost:
    """FLOPs per sample of one training step's forward and backward pass."""

    fwd: float
    bwd: float


def measure_cost(model: nn.Module, example_input: torch.Tensor) -> Cost:
    """Forward and backward FLOPs per sample of ``model`` as it is now (train/eval mode,
    dropped and frozen units included), for inputs shaped like ``example_input``. Any example
    batch size gives the same cost per sample (the meta pass runs on at least two samples)."""
    batch = meta_batch(example_input)
    with FlopCounterMode(display=False) as forward:
        out = meta_call(model, batch)
    bwd = 0
    if isinstance(out, torch.Tensor) and out.requires_grad:
        with FlopCounterMode(display=False) as backward:
            out.float().sum().backward()
        bwd = backward.get_total_flops()
    n = batch.shape[0]
    return Cost(forward.get_total_flops() / n, bwd / n)


def unit_costs(model: nn.Module, example_input: torch.Tensor, units: Sequence[Unit]
               ) -> dict[str, Cost]:
    """FLOPs per sample that each unit adds to a training step of ``model``.

    One forward and backward pass under ``FlopCounterMode`` (on meta tensors) attributes the
    FLOPs to modules; a unit whose modules do not show up there (no counted operation, or a
    naming the counter does not follow) is measured by difference instead: the full cost minus
    the cost with the unit replaced by the identity.
    """
    batch = meta_batch(example_input)
    with FlopCounterMode(display=False) as counter:
        out = meta_call(model, batch)
        forward = counter.get_flop_counts()
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.float().sum().backward()
        total = counter.get_flop_counts()
    n = batch.shape[0]
    root = type(model).__name__
    costs: dict[str, Cost] = {}
    full: Cost | None = None
    for unit in units:
        keys = [f"{root}.{m}" for m in unit.modules]
        if all(k in forward for k in keys):
            fwd = sum(sum(forward[k].values()) for k in keys)
            both = sum(sum(total.get(k, {}).values()) for k in keys)
            costs[unit.name] = Cost(fwd / n, (both - fwd) / n)
            continue
        full = full or measure_cost(model, example_input)
        old = [replace_module(model, m, nn.Identity()) for m in unit.modules]
        try:
            without = measure_cost(model, example_input)
        finally:
            for m, module in zip(unit.modules, old, strict=True):
                replace_module(model, m, module)
        costs[unit.name] = Cost(full.fwd - without.fwd, full.bwd - without.bwd)
    return costs


class FlopsLedger:
    """Executed FLOPs of a training run, against the full network over the same samples.

    ``record(key, samples)`` adds samples trained in configuration ``key`` (any hashable that
    identifies the network's structure); a new key is measured once on the model as it is at that
    moment. Costs may also be given directly with ``set_cost`` (e.g. additive per-unit costs).
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor) -> None:
        self.model = model
        self.example_input = example_input
        self.full = measure_cost(model, example_input)
        self.costs: dict[Hashable, Cost] = {}
        self.samples: dict[Hashable, int] = {}

    def set_cost(self, key: Hashable, cost: Cost) -> None:
        self.costs[key] = cost

    def cost(self, key: Hashable) -> Cost:
        if key not in self.costs:
            self.costs[key] = measure_cost(self.model, self.example_input)
        return self.costs[key]

    def record(self, key: Hashable, samples: int) -> None:
        self.cost(key)
        self.samples[key] = self.samples.get(key, 0) + samples

    @property
    def samples_seen(self) -> int:
        return sum(self.samples.values())

    def totals(self) -> dict[str, float]:
        """Cumulative FLOPs so far and their reductions against the full network."""
        fwd = sum(self.costs[k].fwd * n for k, n in self.samples.items())
        bwd = sum(self.costs[k].bwd * n for k, n in self.samples.items())
        n = self.samples_seen
        fwd_full, bwd_full = self.full.fwd * n, self.full.bwd * n
        return {
            "fwd_flops": fwd,
            "fwd_flops_full": fwd_full,
            "fwd_flops_reduction": 1 - fwd / fwd_full if fwd_full else 0.0,
            "bwd_flops": bwd,
            "bwd_flops_full": bwd_full,
            "bwd_flops_reduction": 1 - bwd / bwd_full if bwd_full else 0.0,
        }

    def state_dict(self) -> dict:
        return {
            "full": (self.full.fwd, self.full.bwd),
            "costs": [(k, (c.fwd, c.bwd)) for k, c in self.costs.items()],
            "samples": list(self.samples.items()),
        }

    def load_state_dict(self, state: dict) -> None:
        self.full = Cost(*state["full"])
        self.costs = {_key(k): Cost(*c) for k, c in state["costs"]}
        self.samples = {_key(k): n for k, n in state["samples"]}


def _key(key: Hashable) -> Hashable:
    # Keys come back from checkpoints as lists where they were tuples.
    return tuple(_key(k) for k in key) if isinstance(key, list) else key

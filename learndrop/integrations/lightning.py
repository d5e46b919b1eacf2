"""Learn&Drop in PyTorch Lightning 2.x: :class:`LearnDropCallback`.

Attach the callback to a ``Trainer`` with any LightningModule whose network has droppable
units::

    from learndrop.integrations.lightning import LearnDropCallback
    from learndrop.policy import DropPolicy

    callback = LearnDropCallback(policy=DropPolicy(change_threshold=0.7))
    trainer = lightning.Trainer(max_epochs=30, callbacks=[callback])
    trainer.fit(module)                      # later: trainer.fit(module, ckpt_path="last.ckpt")
    callback.method.summary()                # units dropped, FLOPs saved

It builds the method (Learn&Drop, or any registered name) on the network, the trainer's
optimizer and an example input; drives it at the batch boundaries (``before_step`` before every
batch, ``step`` after every optimizer step); scores and drops once per epoch (or every
``steps_per_check`` optimizer steps); logs ``learndrop/*`` metrics through the module's logger;
and keeps its state in Lightning checkpoints, so that ``trainer.fit(ckpt_path=...)`` resumes
with the dropped structure.

Resuming, step by step (Lightning 2.x restores in this order): the model's weights are loaded
(1) before any callback sees the checkpoint, into a model of the full structure, and the
optimizer's state (4) after ``on_fit_start``. So the callback (a) lets the model load
non-strictly in ``setup`` and checks itself, in ``on_load_checkpoint``, that exactly the dropped
units' keys were missing; (2) receives its state in ``load_state_dict``; (3) in ``on_fit_start``
(optimizer built, its state not loaded yet) re-applies the drops to the model and the optimizer,
so that (4) the optimizer state of the dropped network loads into a matching optimizer.

Single-device training is what is tested. Under Lightning's DDP strategy every rank applies rank
0's decision (``trainer.strategy.broadcast``), but the DDP wrapper is not rebuilt after a drop:
use ``DDPStrategy(find_unused_parameters=True)`` there, or learndrop's own trainer
(``learndrop train --nproc N``), which rebuilds it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

try:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback
except ImportError as err:  # the optional extra
    raise ImportError("learndrop.integrations.lightning needs lightning 2.x: "
                      "pip install 'learndrop[lightning]'") from err

from learndrop.methods import Method, create_method, method_takes
from learndrop.units import Unit

__all__ = ["LearnDropCallback", "default_input", "default_target"]


def _entry(batch: Any, index: int, keys: tuple[str, ...], what: str, option: str) -> torch.Tensor:
    """Element ``index`` of a tuple/list batch, or the first of ``keys`` in a dict batch."""
    if isinstance(batch, (list, tuple)) and len(batch) > index and isinstance(batch[index],
                                                                            torch.Tensor):
        return batch[index]
    if isinstance(batch, dict):
        for key in keys:
            if isinstance(batch.get(key), torch.Tensor):
                return batch[key]
    raise TypeError(f"cannot find the {what} tensor in a batch of type {type(batch).__name__}; "
                    f"pass {option}=... to LearnDropCallback")


def default_input(batch: Any) -> torch.Tensor:
    """The input tensor of a batch: the batch itself, its first element (``(x, y)``), or its
    ``"x"``/``"input"``/``"image"``/``"pixel_values"`` entry."""
    if isinstance(batch, torch.Tensor):
        return batch
    return _entry(batch, 0, ("x", "input", "image", "pixel_values"), "input", "input_fn")


def default_target(batch: Any) -> torch.Tensor:
    """The target tensor of a batch: its second element (``(x, y)``) or its
    ``"y"``/``"target"``/``"label"``/``"labels"`` entry."""
    return _entry(batch, 1, ("y", "target", "label", "labels"), "target", "target_fn")


class LearnDropCallback(Callback):
    """Scores and drops the units of a LightningModule's network while it trains.

    Args:
        method: a registered method name (``"learndrop"``, ``"freeze"``, ``"freezeout"``...).
        model_attr: attribute of the LightningModule holding the network (e.g. ``"net"``);
            by default, see :meth:`network`.
        example_input: an input batch (only shape and dtype are used); default the first
            training batch's input.
        input_fn: picks the input tensor out of a batch (default :func:`default_input`).
        target_fn: picks the target tensor out of a batch (default :func:`default_target`);
            with ``input_fn`` it gives the ``(x, y)`` batches from which Learn&Drop measures
            drop costs and recalibrates BatchNorm (the method's loss is ``loss_fn=...``,
            default cross-entropy).
        steps_per_check: optimizer steps between checks; default one epoch.
        log_metrics: log ``learndrop/*`` metrics at the end of every training epoch.
        **method_kwargs: passed to the method (e.g. ``policy=DropPolicy(...)``, ``unit_names``).
            ``total_steps``, where the method takes it and it is not passed, is Lightning's
            ``trainer.estimated_stepping_batches`` (on resume, the one saved in the
            checkpoint; left out when unknown, e.g. an endless loader without ``max_steps``).

    Attributes:
        method: the :class:`~learndrop.methods.Method` (``None`` before training starts).
    """

    def __init__(
        self,
        method: str = "learndrop",
        *,
        model_attr: str | None = None,
        example_input: torch.Tensor | None = None,
        input_fn: Callable[[Any], torch.Tensor] = default_input,
        target_fn: Callable[[Any], torch.Tensor] = default_target,
        steps_per_check: int | None = None,
        log_metrics: bool = True,
        **method_kwargs: Any,
    ) -> None:
        super().__init__()
        self.method_name = method
        self.model_attr = model_attr
        self.example_input = example_input
        self.input_fn = input_fn
        self.target_fn = target_fn
        self.steps_per_check = steps_per_check
        self.log_metrics = log_metrics
        self.method_kwargs = method_kwargs
        self.method: Method | None = None
        self._pending: dict | None = None  # state from a checkpoint, applied in on_fit_start
        self._strict: bool | None = None  # the module's strict_loading, while we relax it
        self._samples = 0  # samples since the last optimizer step
        self._last_global_step = 0

    @property
    def state_key(self) -> str:
        return self._generate_state_key(method=self.method_name, model_attr=self.model_attr)

    # ---- building -----------------------------------------------------------------------------
    def network(self, pl_module: pl.LightningModule) -> nn.Module:
        """The network whose units are dropped: the ``model_attr`` attribute when given; else
        the module's ``model`` attribute when that is an ``nn.Module``; else the module itself
        when it defines ``forward``; else (the common style that keeps the network in an
        attribute such as ``self.net`` and calls it in ``training_step``) the one child module
        that holds all of its parameters.

        Raises:
            ValueError: none of these applies (one line naming the children to choose from).
        """
        name = type(pl_module).__name__
        if self.model_attr is not None:
            inner = getattr(pl_module, self.model_attr, None)
            if not isinstance(inner, nn.Module):
                raise ValueError(f"{name}.{self.model_attr} is not an nn.Module; pass "
                                 "model_attr=<the attribute holding the network>")
            return inner
        inner = getattr(pl_module, "model", None)
        if isinstance(inner, nn.Module):
            return inner
        if type(pl_module).forward is not pl.LightningModule.forward:
            return pl_module
        params = {id(p) for p in pl_module.parameters()}
        holders = [(n, c) for n, c in pl_module.named_children()
                   if params and {id(p) for p in c.parameters()} == params]
        if len(holders) == 1:
            return holders[0][1]
        children = [n for n, c in pl_module.named_children() if any(True for _ in c.parameters())]
        raise ValueError(
            f"{name} has no forward() and no single child module holding all its parameters "
            f"(children with parameters: {', '.join(children) or 'none'}); pass "
            f"LearnDropCallback(model_attr=...) naming the network, e.g. "
            f"model_attr={children[0] if children else 'net'!r}")

    def _build(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
               example: torch.Tensor, units: list[Unit] | None = None,
               saved: dict | None = None) -> None:
        if len(trainer.optimizers) != 1:
            raise ValueError(f"LearnDropCallback needs exactly one optimizer, the trainer has "
                             f"{len(trainer.optimizers)}")
        example = example.detach().to(pl_module.device)
        kwargs = dict(self.method_kwargs)
        if "total_steps" not in kwargs and method_takes(self.method_name, "total_steps"):
            total = self._total_steps(trainer, saved)
            if total is not None:
                kwargs["total_steps"] = total
        optimizer = trainer.optimizers[0]
        groups = len(optimizer.param_groups)
        self.method = create_method(
            self.method_name, self.network(pl_module), optimizer, example,
            units=units, steps_per_check=self._steps_per_check(trainer), **kwargs)
        if len(optimizer.param_groups) != groups and trainer.lr_scheduler_configs:
            # Lightning creates the schedulers before any callback sees a batch; a scheduler
            # that holds one value per group (LambdaLR, CosineAnnealingLR) fails on its next
            # step, others would leave the new groups alone.
            raise ValueError(
                f"method {self.method_name!r} added optimizer parameter groups (per-unit "
                f"learning rates) that the LR scheduler of configure_optimizers() does not "
                f"know: return no scheduler with it, or use learndrop train")
        if self.method.moves_schedule:
            configs = trainer.lr_scheduler_configs
            if len(configs) != 1 or configs[0].interval != "step" or configs[0].frequency != 1:
                raise ValueError(
                    f"method {self.method_name!r} rewinds the learning-rate schedule after "
                    f"drops (lr_rewind_steps) and needs the one LambdaLR of "
                    f"configure_optimizers() stepped every optimizer step: return "
                    f"{{'scheduler': LambdaLR(...), 'interval': 'step'}}, or leave "
                    f"lr_rewind_steps out")
            self.method.attach_schedule(configs[0].scheduler)
        if trainer.world_size > 1:
            strategy = trainer.strategy
            self.method.sync = lambda names: list(strategy.broadcast(list(names), src=0))

    def _total_steps(self, trainer: pl.Trainer, saved: dict | None) -> int | None:
        """The run's length in optimizer steps, for methods that schedule by it (FreezeOut,
        Learn&Drop's fades and its rule of no drop at the last check): on resume the one the
        run was saved with; otherwise Lightning's count (``max_epochs`` or ``max_steps``,
        gradient accumulation included). ``None`` when unknown (an endless loader without
        ``max_steps``: Lightning then reports ``max_steps``, -1 by default)."""
        if saved is not None:
            total = saved.get("total_steps")
            return total if isinstance(total, int) and total > 0 else None
        # On resume this would set up the training data before Lightning restores the
        # loader's state (so it is not read there); at the first batch the data are set up.
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total) or total <= 0:
            if method_takes(self.method_name, "total_steps", required=True):
                raise ValueError(
                    f"method {self.method_name!r} needs the run's length, and Lightning does "
                    f"not know it (an endless loader?): set Trainer(max_steps=...) or pass "
                    f"LearnDropCallback(total_steps=...)")
            return None
        return int(total)

    def _steps_per_check(self, trainer: pl.Trainer) -> int | None:
        if self.steps_per_check is not None:
            return self.steps_per_check
        batches = trainer.num_training_batches
        if not math.isfinite(batches):
            return None  # not known yet (on_fit_start) or an endless loader: see on_train_start
        return max(1, math.ceil(batches / trainer.accumulate_grad_batches))

    # ---- resume ---------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            # A checkpoint of a dropped network lacks the dropped units' weights; the model is
            # still full when Lightning loads it, before any callback hook sees the checkpoint.
            self._strict = pl_module.strict_loading
            pl_module.strict_loading = False

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if not self._strict:
            return
        # What strict loading would have checked, knowing which units were dropped.
        state = checkpoint.get("callbacks", {}).get(self.state_key) or {}
        prefix = _prefix(pl_module, self.network(pl_module))
        dropped = {e["unit"] for e in state.get("method", {}).get("events", [])
                   if e["action"] == "drop"}
        gone = tuple(f"{prefix}{m}." for u in state.get("units", []) if u["name"] in dropped
                     for m in u["modules"])
        expected = {k for k in pl_module.state_dict() if not (gone and k.startswith(gone))}
        found = set(checkpoint["state_dict"])
        if expected != found:
            missing, unexpected = sorted(expected - found), sorted(found - expected)
            raise RuntimeError(
                f"the checkpoint does not fit the model (beyond the dropped units): "
                f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected keys "
                f"{unexpected[:3]}")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict or None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._strict is not None:
            pl_module.strict_loading = self._strict
            self._strict = None
        if self._pending is None:
            return
        # The optimizer exists, its state is loaded after this hook: drop from both now.
        state, self._pending = self._pending, None
        units = [Unit(u["name"], u["kind"], tuple(u["modules"]), u["index"])
                 for u in state["units"]]
        example = self.example_input
        if example is None:
            example = torch.zeros(state["example_shape"], dtype=getattr(
                torch, state["example_dtype"].removeprefix("torch.")))
        self._build(trainer, pl_module, example, units, saved=state["method"])
        self.method.load_state_dict(state["method"])

    def state_dict(self) -> dict[str, Any]:
        if self.method is None:
            return dict(self._pending or {})
        example = self.method.example_input
        return {
            "method": self.method.state_dict(),
            "units": [asdict(u) for u in self.method.units],
            "example_shape": list(example.shape),
            "example_dtype": str(example.dtype),
        }

    # ---- training -------------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_global_step = trainer.global_step
        self._samples = 0
        if self.method is not None and self.method.steps_per_check is None:
            self.method.steps_per_check = self._steps_per_check(trainer)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        if self.method is None:
            x = self.input_fn(batch) if self.example_input is None else self.example_input
            self._build(trainer, pl_module, x)
            if self.method.steps_per_check is None:
                raise ValueError("the training loader has no length: pass steps_per_check")
        self.method.before_step()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.method is None:
            return
        self._samples += len(self.input_fn(batch))
        if trainer.global_step == self._last_global_step:
            return  # accumulating gradients: no optimizer step yet
        self._last_global_step = trainer.global_step
        # Every rank trains on its own batch: the FLOPs ledger counts them all.
        self.method.step(self._samples * trainer.world_size,
                         batch=(self.input_fn(batch), self.target_fn(batch)))
        self._samples = 0

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Training ended (max_epochs, max_steps, EarlyStopping, max_time; not an exception,
        # whose checkpoint resumes what is in flight): a fit stopped early may end with units
        # fading out, settled here (Method.finish) so that the module holds a plain network.
        if self.method is not None:
            self.method.finish()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.method is None or not self.log_metrics:
            return
        totals = self.method.ledger.totals()
        dropped = sum(1 for a in self.method.removed.values() if a == "drop")
        pl_module.log_dict({
            "learndrop/units_dropped": float(dropped),
            "learndrop/units_frozen": float(len(self.method.removed) - dropped),
            "learndrop/units_live": float(len(self.method.live_units)),
            "learndrop/fwd_flops_saved": float(totals["fwd_flops_reduction"]),
            "learndrop/bwd_flops_saved": float(totals["bwd_flops_reduction"]),
            "learndrop/params": float(sum(p.numel() for p in pl_module.parameters())),
        }, on_step=False, on_epoch=True, sync_dist=False)


def _prefix(root: nn.Module, network: nn.Module) -> str:
    """The qualified name of ``network`` inside ``root`` plus a dot ("" for the root)."""
    for name, module in root.named_modules():
        if module is network:
            return f"{name}." if name else ""
    raise ValueError("the network is not a submodule of the LightningModule")

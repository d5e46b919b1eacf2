"""LearnDropCallback with Lightning 2.x: drops, logs, and resumes from a checkpoint."""

import os

import pytest
import torch
import torch.nn.functional as F

pl = pytest.importorskip("lightning.pytorch")

from learndrop.data import load_dataset  # noqa: E402
from learndrop.integrations.lightning import LearnDropCallback  # noqa: E402
from learndrop.models import create_model  # noqa: E402
from learndrop.policy import DropPolicy  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(
        not os.path.isdir("/usr/share/datasets/fashion-mnist")
        and not os.environ.get("LEARNDROP_DATA"),
        reason="Fashion-MNIST not installed (make test installs dataset-fashion-mnist)",
    ),
]

# Two checks per epoch of 8 steps: no cost measurement and a 1-batch recalibration (the default
# 4 batches would outweigh the training between checks). Every unit is a candidate and one goes
# per check, so that drops keep coming until the cap (5 of 7) whatever the CPU's rounding: these
# tests are about the callback, not the scores (with a score threshold, the units a CPU dropped
# by epoch 2 were all it dropped on one machine and not on another).
# No late-drop guard: the StepLR below falls under half its peak after two epochs, and the
# resume test needs drops on both sides of its checkpoint there.
POLICY = DropPolicy(change_threshold=100.0, max_slope=100.0, max_drops_per_check=1,
                    cost_batches=0, max_drop_cost=float("inf"), max_loss_rise=float("inf"),
                    recalibration_batches=1, min_lr_fraction=0.0)


class Classifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = create_model("resnet20", num_classes=10, in_channels=1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.model(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        # A per-step schedule: its state must come back in place on resume, as the optimizer's.
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=8, gamma=0.7)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler,
                                                          "interval": "step"}}


@pytest.fixture(scope="module")
def loader():
    data = load_dataset("fashion-mnist", None, 16, 256, 0, 100)
    x = (data.train_x.float() / 255 - data.mean[0]) / data.std[0]
    dataset = torch.utils.data.TensorDataset(x, data.train_y.long())
    return torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=False)


class StopAfter(pl.Callback):
    """Ends the fit after ``epochs`` epochs of a longer run: an interruption (the run keeps
    its length, so a method scheduled by it sees the same run as the uninterrupted one)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def cpu_trainer(root, callbacks, epochs=1, **options) -> pl.Trainer:
    """A quiet single-CPU Trainer writing under ``root`` (no logger, no checkpoints unless
    ``options`` say otherwise)."""
    return pl.Trainer(**{
        "max_epochs": epochs, "callbacks": callbacks, "accelerator": "cpu", "devices": 1,
        "default_root_dir": root, "logger": False, "enable_progress_bar": False,
        "enable_model_summary": False, "enable_checkpointing": False, **options})


def fit(tmp_path, loader, epochs, ckpt_path=None, name="run", steps_per_check=4, stop_after=None,
        method="learndrop", policy=POLICY, module_cls=Classifier, extra=(), **callback_kwargs):
    pl.seed_everything(0)
    module = module_cls()
    if method == "learndrop":
        callback_kwargs["policy"] = policy
    callback = LearnDropCallback(method, steps_per_check=steps_per_check, **callback_kwargs)
    trainer = cpu_trainer(
        tmp_path / name, [callback, *([StopAfter(stop_after)] if stop_after else []), *extra],
        epochs, logger=pl.loggers.CSVLogger(tmp_path / name), deterministic=True)
    trainer.fit(module, loader, ckpt_path=ckpt_path)
    return trainer, module, callback


def structure(module):
    return [n for n, m in module.model.named_modules() if isinstance(m, torch.nn.Identity)]


def test_callback_drops_logs_and_resumes(tmp_path, loader):
    # Two checks per epoch, so that the checkpoint after epoch 2 already holds drops.
    trainer, module, callback = fit(tmp_path, loader, epochs=4)
    summary = callback.method.summary()
    assert summary["units_dropped"] > 0 and summary["steps"] == 4 * 8
    assert callback.method.checks == 8
    assert summary["samples_seen"] == 4 * 256
    assert summary["fwd_flops_reduction"] > 0
    assert summary["extra_fwd_flops"] > 0  # recalibrated: the callback passed the batches
    params = sum(p.numel() for p in module.parameters())
    assert params == summary["params_final"] < summary["params_initial"]
    # The optimizer holds exactly the live parameters.
    held = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert held == {id(p) for p in module.parameters()}
    logged = trainer.logged_metrics
    assert logged["learndrop/units_dropped"] == summary["units_dropped"]
    assert logged["learndrop/fwd_flops_saved"] == pytest.approx(summary["fwd_flops_reduction"])

    # Two epochs, a checkpoint, then two more epochs from it: the same drops, same structure.
    first, _, cb = fit(tmp_path, loader, epochs=4, stop_after=2, name="part1")
    assert first.global_step == 2 * 8 and cb.method.total_steps == 4 * 8  # Lightning's count
    assert 0 < cb.method.summary()["units_dropped"] < summary["units_dropped"]
    ckpt = tmp_path / "half.ckpt"
    first.save_checkpoint(ckpt)
    resumed, module2, cb2 = fit(tmp_path, loader, epochs=4, ckpt_path=str(ckpt), name="part2")
    assert cb2.method.summary()["drops"] == summary["drops"]
    assert structure(module2) == structure(module)
    assert resumed.global_step == 4 * 8 and cb2.method.total_steps == 4 * 8  # as saved
    assert cb2.method.summary()["samples_seen"] == 4 * 256
    # Same weights as the uninterrupted fit: the optimizer state came back in place too.
    for (name, a), b in zip(module.state_dict().items(), module2.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name


def test_wrong_checkpoint_still_fails_loudly(tmp_path, loader):
    first, _, callback = fit(tmp_path, loader, epochs=1, name="a", steps_per_check=None)
    assert callback.method.steps_per_check == 8 and callback.method.checks == 1  # one epoch
    ckpt = tmp_path / "one.ckpt"
    first.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=True)
    state["state_dict"].pop("model.fc.weight")  # not a dropped unit's key
    torch.save(state, ckpt)
    with pytest.raises(RuntimeError, match="does not fit the model"):
        fit(tmp_path, loader, epochs=2, ckpt_path=str(ckpt), name="b")


class NetInAttribute(pl.LightningModule):
    """The common style: the network in ``self.net``, called in training_step, no forward()."""

    def __init__(self) -> None:
        super().__init__()
        self.net = create_model("resnet20", num_classes=10, in_channels=1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class TwoNets(NetInAttribute):
    def __init__(self) -> None:
        super().__init__()
        self.teacher = create_model("resnet20", num_classes=10, in_channels=1)


def _fit_module(tmp_path, loader, module, **callback_kwargs):
    callback = LearnDropCallback(policy=POLICY, steps_per_check=4, **callback_kwargs)
    trainer = cpu_trainer(tmp_path, [callback], limit_train_batches=4)
    trainer.fit(module, loader)
    return callback


def test_a_module_without_forward_uses_its_network_attribute(tmp_path, loader):
    module = NetInAttribute()
    callback = _fit_module(tmp_path, loader, module)
    assert callback.method.model is module.net
    assert callback.method.steps == 4 and len(callback.method.units) == 7

    with pytest.raises(ValueError, match=r"no forward\(\).*teacher.*model_attr") as err:
        _fit_module(tmp_path, loader, TwoNets())
    assert "\n" not in str(err.value)
    two = TwoNets()
    assert _fit_module(tmp_path, loader, two, model_attr="net").method.model is two.net


def test_the_run_length_comes_from_lightning_fades_and_freezeout_need_it(tmp_path, loader):
    """Learn&Drop's fades and FreezeOut schedule by the run's length: the callback takes it from
    Lightning (``estimated_stepping_batches``) when it is not passed."""
    import dataclasses

    trainer, module, callback = fit(tmp_path, loader, epochs=3, name="fade",
                                    policy=dataclasses.replace(POLICY, fade_steps=4))
    method = callback.method
    assert method.total_steps == 3 * 8
    # A unit decided at a check fades over the 4 steps to the next one, then leaves: every drop
    # comes a check after its decision, and none in the last 4 steps (a fade must end in time).
    drops = [e for e in method.events if e.action == "drop"]
    assert drops and all(e.step % 4 == 0 and e.step <= 3 * 8 - 4 for e in drops)
    assert drops[0].step >= 2 * 4 and method.fading == {}
    assert {e.unit for e in drops} <= set(structure(module))  # gone from the network
    assert method.summary()["units_dropped"] == len(drops)
    # Passed explicitly, the user's number wins.
    _, _, own = fit(tmp_path, loader, epochs=1, name="own", total_steps=100,
                    policy=dataclasses.replace(POLICY, fade_steps=4))
    assert own.method.total_steps == 100

    # FreezeOut needs the run's length (it used to fail unless total_steps was passed) and adds
    # a parameter group per unit, which the scheduler configure_optimizers() made cannot know.
    with pytest.raises(ValueError, match=r"added optimizer parameter groups.*no scheduler"):
        fit(tmp_path, loader, epochs=2, name="freezeout-scheduled", method="freezeout")
    callback = LearnDropCallback("freezeout", steps_per_check=4)
    cpu_trainer(tmp_path / "freezeout", [callback], 2).fit(NetInAttribute(), loader)  # no scheduler
    assert callback.method.total_steps == 2 * 8 and callback.method.summary()["units_frozen"] > 0


def test_a_fit_stopped_mid_fade_ends_with_a_plain_network(tmp_path, loader):
    """A fit planned for 3 epochs and stopped after 2 (as EarlyStopping would) while a unit is
    half faded out: at the end of training the callback settles it (dropped, as it was at
    least half gone) and no blend is left in the network's forward hooks."""
    import dataclasses

    _, module, callback = fit(tmp_path, loader, epochs=3, stop_after=2, name="stopped",
                              policy=dataclasses.replace(POLICY, fade_steps=8))
    method = callback.method
    # Fades start at steps 8 and 12 (a 3-epoch run has room for no later one); the fit stops at
    # step 16, when the first has ended and the second is half way.
    assert method.total_steps == 3 * 8 and method.steps == 2 * 8
    assert [e.step for e in method.events] == [16, 16] and method.fading == {}
    assert len({e.unit for e in method.events}) == 2
    assert {e.unit for e in method.events} <= set(structure(module))  # gone from the network
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


class LinearDecay(Classifier):
    """A LambdaLR stepped every optimizer step: linear decay to 0 over 2 epochs of 8 steps."""

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / 16)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler,
                                                          "interval": "step"}}


class Rates(pl.Callback):
    """The learning rate of every training step."""

    def __init__(self) -> None:
        self.rates = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_the_callback_rewinds_a_per_step_lambdalr_after_drops(tmp_path, loader):
    """``lr_rewind_steps=8``: the drop after step 8 moves the schedule back to step 0, so step
    9 runs at the full rate again and the rest decays to 0 at the fit's end; a scheduler the
    method cannot move is refused before any step."""
    import dataclasses

    plain, rewound = Rates(), Rates()
    fit(tmp_path, loader, epochs=2, name="plain", module_cls=LinearDecay, extra=[plain])
    _, _, callback = fit(tmp_path, loader, epochs=2, name="rewound", module_cls=LinearDecay,
                         extra=[rewound], policy=dataclasses.replace(POLICY, lr_rewind_steps=8))
    first = callback.method.summary()["schedule_rewinds"][0]
    assert first == {"step": 8, "from": 8.0, "to": 0.0}
    assert rewound.rates[:9] == pytest.approx(plain.rates[:8] + [0.05])
    assert all(r > p for r, p in zip(rewound.rates[8:], plain.rates[8:], strict=True))
    with pytest.raises(ValueError, match="needs a LambdaLR stepped once per optimizer step"):
        fit(tmp_path, loader, epochs=1, name="steplr",
            policy=dataclasses.replace(POLICY, lr_rewind_steps=8))
    with pytest.raises(ValueError, match=r"stepped every optimizer step: return") as err:
        fit(tmp_path, loader, epochs=1, name="per-epoch", module_cls=PerEpoch,
            policy=dataclasses.replace(POLICY, lr_rewind_steps=8))
    assert "\n" not in str(err.value)


class PerEpoch(Classifier):
    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.05)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda epoch: 0.5 ** epoch)}  # Lightning's default interval: "epoch"


class Endless(torch.utils.data.IterableDataset):
    """A stream without a length: Lightning cannot count the run's steps."""

    def __init__(self, loader) -> None:
        self.batches = list(loader)

    def __iter__(self):
        while True:
            yield from self.batches


@pytest.mark.parametrize(("method", "kwargs", "message"), [
    ("freezeout", {}, r"needs the run's length.*max_steps"),
    ("learndrop", {"policy": DropPolicy(fade_steps=4)}, r"fade_steps=4 needs the run's length"),
])
def test_a_run_of_unknown_length_is_refused_by_methods_that_need_it(tmp_path, loader, method,
                                                                    kwargs, message):
    callback = LearnDropCallback(method, steps_per_check=4, **kwargs)
    trainer = cpu_trainer(tmp_path, [callback])
    with pytest.raises(ValueError, match=message) as err:
        trainer.fit(NetInAttribute(), torch.utils.data.DataLoader(Endless(loader),
                                                                  batch_size=None))
    assert "\n" not in str(err.value)


def test_under_several_processes_every_rank_applies_rank_0s_decision():
    """The callback hands the method the strategy's broadcast (the DDP path is not run here:
    a stand-in trainer of two ranks whose broadcast returns rank 0's names)."""
    from types import SimpleNamespace

    module = NetInAttribute()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05)
    sent = []

    def broadcast(obj, src=0):
        sent.append((list(obj), src))
        return ["layer1.0"]

    trainer = SimpleNamespace(
        optimizers=[optimizer], world_size=2, strategy=SimpleNamespace(broadcast=broadcast),
        lr_scheduler_configs=[], estimated_stepping_batches=16, num_training_batches=8,
        accumulate_grad_batches=1)
    callback = LearnDropCallback(policy=POLICY)
    callback._build(trainer, module, torch.zeros(2, 1, 16, 16))
    assert callback.method.total_steps == 16 and callback.method.steps_per_check == 8
    assert callback.method.sync(["layer3.2"]) == ["layer1.0"] and sent == [(["layer3.2"], 0)]

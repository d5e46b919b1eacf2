"""Fine-tuning: starting weights, a replaced head, clear errors, and LR-free scores."""

import os
import urllib.error

import pytest
import torch
from torch import nn

from learndrop.checkpoint import save_slim
from learndrop.cli import main
from learndrop.models import create_model
from learndrop.scores import ScoreTracker
from learndrop.surgery import drop_unit
from learndrop.train import TrainConfig
from learndrop.train.builder import build_model
from learndrop.train.config import ConfigError
from learndrop.units import find_units

HAVE_FASHION = os.path.isdir("/usr/share/datasets/fashion-mnist") or bool(
    os.environ.get("LEARNDROP_DATA"))


class Spec:
    """The two facts of a dataset that build_model needs."""

    def __init__(self, num_classes: int, in_channels: int = 1) -> None:
        self.num_classes, self.in_channels = num_classes, in_channels


def saved(tmp_path, obj, name="w.pt"):
    path = tmp_path / name
    torch.save(obj, path)
    return str(path)


def build(weights, classes, replace_head=None, model="resnet20", in_channels=1):
    config = TrainConfig(model=model, weights=weights, replace_head=replace_head)
    return build_model(config, Spec(classes, in_channels), torch.device("cpu"))


def test_weights_with_a_replaced_head(tmp_path):
    torch.manual_seed(0)
    source = create_model("resnet20", num_classes=10, in_channels=1)
    state = source.state_dict()
    # Three file formats: a state dict, a learndrop checkpoint, a slim network (model.pt).
    slim = tmp_path / "model.pt"
    save_slim(slim, source, architecture="resnet20", num_classes=10, in_channels=1)
    files = [saved(tmp_path, obj, f"w{i}.pt") for i, obj in
             enumerate((state, {"model": state, "method": {}}))] + [str(slim)]
    for path in files:
        model = build(path, classes=5, replace_head=5)
        assert model.fc.out_features == 5
        assert torch.equal(model.conv1.weight, source.conv1.weight)
        assert torch.equal(model.layer3[2].conv2.weight, source.layer3[2].conv2.weight)

    # --replace-head with the old head's size still gives a fresh head (new task, new classes).
    five = create_model("resnet20", num_classes=5, in_channels=1)
    model = build(saved(tmp_path, five.state_dict(), "five.pt"), classes=5, replace_head=5)
    assert not torch.equal(model.fc.weight, five.fc.weight)
    # Without --replace-head a same-size head is kept (continue training on the same task).
    model = build(saved(tmp_path, five.state_dict(), "five.pt"), classes=5)
    assert torch.equal(model.fc.weight, five.fc.weight)


def test_wrong_weights_are_one_clear_line(tmp_path):
    rgb = saved(tmp_path, create_model("resnet20", num_classes=10, in_channels=3).state_dict())
    with pytest.raises(ConfigError) as err:
        build(rgb, classes=10, in_channels=1)
    assert str(err.value) == (f"--weights {rgb} does not fit this model: shape mismatch at "
                              "conv1.weight: (16, 3, 3, 3) in the file, (16, 1, 3, 3) in the model")

    deeper = saved(tmp_path, create_model("resnet32", num_classes=10, in_channels=1).state_dict(),
                   "deep.pt")
    with pytest.raises(ConfigError, match=r"keys in the file that the model lacks \(e.g. layer1.3"):
        build(deeper, classes=10)

    # A slimmed network (a learndrop run's model.pt after drops) lacks the dropped units.
    slim = create_model("resnet20", num_classes=10, in_channels=1)
    unit = find_units(slim, torch.zeros(2, 1, 16, 16))[0]
    drop_unit(slim, unit)
    save_slim(tmp_path / "slim.pt", slim, architecture="resnet20", num_classes=10, in_channels=1)
    with pytest.raises(ConfigError, match="keys missing .*full-structure state dict"):
        build(str(tmp_path / "slim.pt"), classes=10)
    # A pickled module is code, not weights: refused (weights_only), with what to do instead.
    with pytest.raises(ConfigError, match="not a plain tensor file.*state_dict"):
        build(saved(tmp_path, slim, "pickled.pt"), classes=10)

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match="not a readable PyTorch file"):
        build(str(junk), classes=10)
    for message in (str(e) for e in [err.value]):
        assert "\n" not in message


@pytest.mark.skipif(not HAVE_FASHION, reason="Fashion-MNIST missing")
def test_cli_errors_for_weights_and_offline_pretrained(tmp_path, capsys, monkeypatch):
    rgb = saved(tmp_path, create_model("resnet20", num_classes=10, in_channels=3).state_dict())
    common = ["train", "--subset", "64", "--test-subset", "50", "--image-size", "16",
              "--epochs", "1", "--quiet", "--no-plots"]
    code = main([*common, "--weights", rgb, "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "shape mismatch at conv1.weight: (16, 3, 3, 3) in the file" in err

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)
    code = main([*common, "--model", "resnet18", "--pretrained", "--replace-head", "10",
                 "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "could not download torchvision weights for resnet18" in err
    assert "--weights FILE" in err
    assert not (tmp_path / "b" / "summary.json").exists()


def _scores_at_lr(lr: float, checks: int = 4, steps: int = 10):
    """Change scores and raw relative changes of the same short training at ``lr``."""
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=4, in_channels=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    units = find_units(model, torch.zeros(2, 1, 8, 8))
    tracker = ScoreTracker(model, units, optimizer, trend_window=3, warmup_checks=1)
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(checks):
        for _ in range(steps):
            y = torch.randint(0, 4, (16,), generator=g)
            x = torch.randn(16, 1, 8, 8, generator=g) + y.view(-1, 1, 1, 1).float()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
            tracker.accumulate_lr()
        out.append(tracker.check())
    return out


def test_lr_normalisation_makes_scores_independent_of_the_lr_size():
    """Fine-tuning-like learning rates, 1e-3 and 1e-4: over the same steps the raw parameter
    change differs ~10x, the LR-normalised change score (what the drop rule reads) agrees
    within 15%. (Over longer runs the two drift apart as the larger LR makes more progress:
    the scores follow learning progress, not the LR's size.)"""
    big, small = _scores_at_lr(1e-3, checks=1), _scores_at_lr(1e-4, checks=1)
    for name, b in big[0].items():
        s = small[0][name]
        assert 0.85 < b.change / s.change < 1.15, (name, b, s)
        raw = (b.change * 1e-3) / (s.change * 1e-4)  # relative change without the LR division
        assert raw > 8, (name, raw)

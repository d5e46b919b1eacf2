"""Safe loading: no file a user passes runs code; the slim network rebuilds without pickled code."""

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from learndrop import load_slim
from learndrop.checkpoint import CheckpointError, read_state_dict, safe_load, save_slim
from learndrop.models import create_model
from learndrop.surgery import drop_unit
from learndrop.units import find_units

ROOT = Path(__file__).resolve().parents[1]
HAVE_FASHION = os.path.isdir("/usr/share/datasets/fashion-mnist") or bool(
    os.environ.get("LEARNDROP_DATA"))


class Payload:
    """Unpickling this calls ``open(marker, "w")``: a file appears if the pickle ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def evil_weights(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "code-ran"
    path = tmp_path / "weights.pt"
    state = create_model("resnet20", in_channels=1).state_dict()
    torch.save({**state, "extra": Payload(marker)}, path)
    assert path.stat().st_size > 1000 and not marker.exists()
    return path, marker


def test_a_weights_file_cannot_run_code(tmp_path):
    path, marker = evil_weights(tmp_path)
    with pytest.raises(CheckpointError, match="not a plain tensor file: its pickle calls") as err:
        safe_load(path)
    assert "\n" not in str(err.value) and "state_dict" in str(err.value)
    with pytest.raises(CheckpointError):
        read_state_dict(path)
    assert not marker.exists()


@pytest.mark.skipif(not HAVE_FASHION, reason="Fashion-MNIST missing")
def test_learndrop_train_weights_refuses_code_in_one_line(tmp_path, capsys):
    from learndrop.cli import main

    path, marker = evil_weights(tmp_path)
    code = main(["train", "--weights", str(path), "--subset", "64", "--test-subset", "50",
                 "--image-size", "16", "--epochs", "1", "--quiet", "--no-plots",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "not a plain tensor file" in err
    assert not marker.exists()


def test_slim_network_round_trip(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=7, in_channels=1)
    x = torch.randn(4, 1, 16, 16)
    for unit in find_units(model, x)[:3]:
        drop_unit(model, unit)
    path = tmp_path / "model.pt"
    save_slim(path, model, architecture="resnet20", num_classes=7, in_channels=1)
    raw = torch.load(path, weights_only=True)  # plain torch, nothing unpickled but tensors
    assert raw["format"] == "learndrop.slim/1"
    assert {"layer1.0", "layer1.1", "layer1.2"} <= set(raw["identity_modules"])
    rebuilt = load_slim(path)
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(
        p.numel() for p in model.parameters())
    assert torch.equal(rebuilt.eval()(x), model.eval()(x))
    assert read_state_dict(path).keys() == model.state_dict().keys()

    # A model that is not in the registry: pass a freshly built full one.
    custom = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1),
                           nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    drop_unit(custom, find_units(custom, x)[0])
    save_slim(tmp_path / "custom.pt", custom, architecture="mine", num_classes=2, in_channels=1)
    fresh = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    rebuilt = load_slim(tmp_path / "custom.pt", model=fresh)
    assert isinstance(rebuilt[1], nn.Identity) and torch.equal(rebuilt(x), custom(x))

    torch.save(model.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a learndrop slim network"):
        load_slim(tmp_path / "plain.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="not a readable PyTorch file"):
        load_slim(tmp_path / "junk.pt")


def test_no_source_or_doc_teaches_unsafe_loading():
    unsafe = "weights_only=" + "False"
    files = [*ROOT.glob("learndrop/**/*.py"), *ROOT.glob("benchmarks/**/*.py"),
             *ROOT.glob("tests/**/*.py"), *ROOT.glob("docs/*.md"), ROOT / "README.md"]
    offenders = [str(f.relative_to(ROOT)) for f in files if unsafe in f.read_text()]
    assert offenders == []

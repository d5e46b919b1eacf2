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


class _System:
    def __reduce__(self):
        return (os.system, ("true",))


def test_an_os_system_pickle_is_named_not_advised_to_unpickle(tmp_path):
    """PyTorch words a blocked module ('... GLOBAL posix.system whose module posix is blocked')
    differently from an unknown global; both get learndrop's one line, never PyTorch's advice
    to turn weights_only off."""
    path = tmp_path / "w.pt"
    torch.save({"x": _System()}, path)
    with pytest.raises(CheckpointError) as err:
        safe_load(path)
    message = str(err.value)
    assert "not a plain tensor file: its pickle calls" in message and "system" in message
    assert "weights_only` set to `False`" not in message and "\n" not in message


def test_unreadable_files_say_what_they_are(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty$"):
        safe_load(empty)
    model = create_model("resnet20", num_classes=10, in_channels=1)
    wrapped = tmp_path / "lightning.ckpt"
    torch.save({"epoch": 3, "state_dict": model.state_dict()}, wrapped)
    with pytest.raises(CheckpointError, match="under the key 'state_dict'"):
        read_state_dict(wrapped)
    ckpt = tmp_path / "last.ckpt"
    torch.save({"method": {}, "model": model.state_dict()}, ckpt)
    with pytest.raises(CheckpointError, match=r"learndrop checkpoint \(last.ckpt\)"):
        load_slim(ckpt)
    newer = tmp_path / "newer.pt"
    torch.save({"format": "learndrop.slim/9"}, newer)
    with pytest.raises(CheckpointError, match="upgrade learndrop"):
        load_slim(newer)
    damaged = tmp_path / "damaged.pt"
    torch.save({"format": "learndrop.slim/1", "state_dict": model.state_dict()}, damaged)
    with pytest.raises(CheckpointError, match="lacks 'architecture'"):
        load_slim(damaged)


def test_atomic_writes_leave_no_temporary_and_keep_the_umask_mode(tmp_path):
    """A result written atomically reads as open() would have written it: the umask's mode,
    not mkstemp's 0600; and an interrupted write leaves neither a half file nor its temporary."""
    import os

    from learndrop.atomic import atomic_write, atomic_write_text

    umask = os.umask(0o027)
    os.umask(umask)
    path = tmp_path / "results.md"
    atomic_write_text(path, "done\n")
    assert path.read_text() == "done\n"
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask

    def crash(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash)
    assert path.read_text() == "done\n" and [p.name for p in tmp_path.iterdir()] == [path.name]

"""Reading and writing learndrop's files without running code.

Every file learndrop reads goes through :func:`safe_load`, that is ``torch.load(...,
weights_only=True)``: PyTorch's restricted unpickler accepts tensors, containers and plain values,
and refuses any other object, so a downloaded weights file whose pickle would call
``os.system`` (or anything else) cannot run code; it is refused with a one-line error instead.
learndrop's own files need nothing beyond those defaults: a checkpoint (``last.ckpt``) holds
state dicts, lists, dicts, numbers and strings, and so does the slim network (``model.pt``).

The slim network a run ends with (``model.pt``) is therefore not a pickled ``nn.Module`` but a
description that :func:`load_slim` rebuilds::

    {"format": "learndrop.slim/1",
     "architecture": {"name": "resnet20", "num_classes": 10, "in_channels": 1},
     "identity_modules": ["layer1.0", "layer1.0.shortcut", ...],
     "state_dict": {...}}

``load_slim`` builds the registered architecture (``create_model``), puts ``nn.Identity`` at
every name of ``identity_modules`` (the dropped units, and the identity modules the architecture
has anyway: replacing those changes nothing) and loads the state dict strictly.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from learndrop.atomic import atomic_write
from learndrop.surgery import replace_module

__all__ = ["CheckpointError", "SLIM_FORMAT", "load_slim", "read_state_dict", "safe_load",
           "save_slim"]

SLIM_FORMAT = "learndrop.slim/1"


class CheckpointError(ValueError):
    """A file that cannot be read safely, or does not hold what was asked for (one line)."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def safe_load(path: str | os.PathLike) -> object:
    """``torch.load(path, map_location="cpu", weights_only=True)``, with one-line errors.

    Raises:
        CheckpointError: no such file; a file whose pickle holds objects other than tensors,
            containers and plain values (it would run code when unpickled); or a file that is
            not a PyTorch file at all.
    """
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = str(err).partition("WeightsUnpickler error:")[2] or str(err)
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", detail)
        if refused is None:  # not a pickle at all, or a damaged one
            raise CheckpointError(f"{path} is not a readable PyTorch file "
                                  f"({_one_line(detail.split('Check the documentation')[0])})"
                                  ) from err
        raise CheckpointError(
            f"{path} is not a plain tensor file: its pickle calls {refused.group(1)}, and "
            "learndrop never runs code from a file (torch.load weights_only=True); if you trust "
            "it, re-save its weights with torch.save(model.state_dict(), PATH)") from err
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same message
        raise CheckpointError(
            f"{path} is not a readable PyTorch file ({_one_line(err)[:200]})") from err


def _tensors_only(obj: object, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping) or not obj or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise CheckpointError(f"{path} holds no state dict (a mapping of names to tensors)")
    return dict(obj)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model state dict held by ``path``: a plain state dict, a learndrop checkpoint
    (``last.ckpt``: its ``"model"`` entry) or a slim network (``model.pt``: its
    ``"state_dict"``).

    Raises:
        CheckpointError: see :func:`safe_load`; or the file holds no state dict.
    """
    obj = safe_load(path)
    if isinstance(obj, Mapping) and obj.get("format") == SLIM_FORMAT:
        obj = obj.get("state_dict")
    elif isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    return _tensors_only(obj, path)


def save_slim(path: str | os.PathLike, model: nn.Module, *, architecture: str,
              num_classes: int, in_channels: int) -> None:
    """Write ``model`` (e.g. the slim network a run ended with) as a :data:`SLIM_FORMAT` file,
    atomically: its state dict, the registered ``architecture`` name it was built from with
    ``num_classes`` and ``in_channels``, and the names of its ``nn.Identity`` modules."""
    identities = [n for n, m in model.named_modules() if n and isinstance(m, nn.Identity)]
    obj = {
        "format": SLIM_FORMAT,
        "architecture": {"name": architecture, "num_classes": int(num_classes),
                         "in_channels": int(in_channels)},
        "identity_modules": identities,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    atomic_write(Path(path), lambda f: torch.save(obj, f))


def load_slim(path: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Rebuild the network saved by :func:`save_slim` (a run's ``model.pt``), without
    unpickling any code.

    Args:
        path: the file.
        model: a freshly built full network to slim down and fill in place (for models that
            are not in the registry); default: ``create_model`` of the saved architecture.

    Returns:
        The network, on the CPU, in training mode (call ``.eval()`` for inference).

    Raises:
        CheckpointError: not a slim-network file, or its weights do not fit the network.
    """
    obj = safe_load(path)
    if not isinstance(obj, Mapping) or obj.get("format") != SLIM_FORMAT:
        raise CheckpointError(
            f"{path} is not a learndrop slim network ({SLIM_FORMAT}); a plain state dict loads "
            "with model.load_state_dict(torch.load(PATH, weights_only=True))")
    if model is None:
        from learndrop.models import create_model  # imports torchvision: only when needed

        arch = obj["architecture"]
        model = create_model(arch["name"], num_classes=arch["num_classes"],
                             in_channels=arch["in_channels"])
    for name in obj["identity_modules"]:
        try:
            replace_module(model, name, nn.Identity())
        except AttributeError as err:
            raise CheckpointError(
                f"{path}: the network has no module {name!r}; pass the model it was saved "
                "from (load_slim(path, model=...))") from err
    try:
        model.load_state_dict(obj["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: the weights do not fit the network "
                              f"({_one_line(err)[:300]})") from err
    return model

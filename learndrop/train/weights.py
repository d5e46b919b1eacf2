"""Starting weights of a run (``--weights FILE``): read a state dict, check that it fits."""

from __future__ import annotations

import torch
from torch import nn

from learndrop.checkpoint import CheckpointError, read_state_dict
from learndrop.train.config import ConfigError

__all__ = ["head_classes", "load_weights", "weights_classes"]


def head_classes(model: nn.Module) -> int:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else -1


def weights_classes(path: str | None) -> int:
    """Classes of the head stored in the weights file ``path`` (1000, torchvision's pretrained
    ones, when None)."""
    if path is None:
        return 1000
    state = _read_state_dict(path)
    heads = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    return heads[-1].shape[0] if heads else 1000


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    try:
        return read_state_dict(path)  # weights_only: a downloaded file cannot run code
    except CheckpointError as err:
        raise ConfigError(f"--weights {err}") from err


def load_weights(model: nn.Module, path: str) -> None:
    """Load a state dict into ``model``; mismatched shapes are a one-line error."""
    state = _read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    # Keys of the file that the model lacks: e.g. resnet56 weights given to --model resnet20
    # would otherwise load silently into its first blocks.
    extra = [k for k in state if k not in own]
    if wrong:
        detail = (f"shape mismatch at {wrong[0]}: {tuple(state[wrong[0]].shape)} in the file, "
                  f"{tuple(own[wrong[0]].shape)} in the model")
    elif missing:
        detail = (f"{len(missing)} keys missing from the file (e.g. {missing[0]}); a model.pt "
                  "or last.ckpt of a run that dropped units holds the slimmed network, and "
                  "--weights needs a full-structure state dict (e.g. of a --method full run)")
    elif extra:
        detail = (f"{len(extra)} keys in the file that the model lacks (e.g. {extra[0]}); "
                  "is --model the network the weights were trained as?")
    if wrong or missing or extra:
        raise ConfigError(f"--weights {path} does not fit this model: {detail}")
    model.load_state_dict(state, strict=False)

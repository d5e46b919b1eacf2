"""The trainer behind ``learndrop train``: data, model, method, epochs, run directory."""

from learndrop.train.config import ConfigError, TrainConfig
from learndrop.train.trainer import (
    Training,
    TrainingDivergedError,
    TrainingInterrupted,
    evaluate,
    train,
)

__all__ = [
    "ConfigError", "TrainConfig", "Training", "TrainingDivergedError", "TrainingInterrupted",
    "evaluate", "train",
]

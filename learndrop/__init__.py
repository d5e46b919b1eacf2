"""learndrop: train CNNs faster by dropping the layers that have stopped learning.

The functional core (``units``, ``scores``, ``policy``, ``surgery``, ``flops``) works on a plain
``nn.Module`` and optimizer; :class:`LearnDrop` drives it from any training loop.
"""

from learndrop.checkpoint import load_slim
from learndrop.flops import FlopsLedger, measure_cost
from learndrop.methods import Event, LearnDrop, Method, create_method
from learndrop.policy import DropPolicy, PolicyError
from learndrop.surgery import drop_unit, freeze_unit
from learndrop.units import NoDroppableUnitsError, Unit, find_units

__version__ = "0.1.0"

__all__ = [
    "DropPolicy", "Event", "FlopsLedger", "LearnDrop", "Method", "NoDroppableUnitsError",
    "PolicyError", "Unit", "create_method", "drop_unit", "find_units", "freeze_unit",
    "load_slim", "measure_cost",
]

"""Training methods, all on one driver interface (:class:`Method`), built by name.

Every module of this package is a method (plus ``base`` and ``registry``): it registers itself,
with the dataclass of its options, by ``@register_method("name", options=...)``, and is imported
here, so a new method is one new file (and its card in ``docs/``). Drivers build one with
:func:`build_method` (options + :class:`RunInfo`), users also with :func:`create_method`
(constructor keyword arguments).
"""

from __future__ import annotations

import importlib
import pkgutil

from learndrop.methods.base import (
    Event,
    Method,
    MethodOptionError,
    MissingBatchesError,
    RunInfo,
    Stopwatch,
)
from learndrop.methods.registry import (
    METHODS,
    UnknownMethodError,
    build_method,
    create_method,
    field_help,
    method_takes,
    option_flag,
    parse_options,
    register_method,
)

# Import every method module: each registers itself.
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "registry"):
        importlib.import_module(f"{__name__}.{_module.name}")

from learndrop.methods.freezeout import FreezeOut  # noqa: E402
from learndrop.methods.full import Full  # noqa: E402
from learndrop.methods.full_rewound import FullRewound  # noqa: E402
from learndrop.methods.learndrop import Freeze, LearnDrop  # noqa: E402
from learndrop.methods.random_drop import RandomDrop  # noqa: E402
from learndrop.methods.slim import SlimFromScratch  # noqa: E402
from learndrop.methods.stochastic_depth import StochasticDepth  # noqa: E402

__all__ = [
    "Event", "Freeze", "FreezeOut", "Full", "FullRewound", "LearnDrop", "METHODS", "Method",
    "MethodOptionError", "MissingBatchesError", "RandomDrop", "RunInfo", "SlimFromScratch",
    "StochasticDepth", "Stopwatch",
    "UnknownMethodError", "build_method", "create_method", "field_help", "method_takes",
    "option_flag",
    "parse_options", "register_method",
]

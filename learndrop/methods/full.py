"""Full training: the reference of every comparison (nothing is dropped)."""

from __future__ import annotations

from learndrop.methods.base import Method
from learndrop.methods.registry import register_method

__all__ = ["Full"]


@register_method("full")
class Full(Method):
    """Ordinary training: nothing is dropped; the reference of every comparison."""

    require_units = False

"""The error of the recommendations and the check of their positive inputs."""

from __future__ import annotations

import math


class RecommendationError(ValueError):
    """Inputs of a recommendation are invalid or describe no usable model run."""


def require_positive(name: str, value: float) -> None:
    """Raise `RecommendationError` unless `value` is a finite number above 0."""
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise RecommendationError(f"{name}={value!r} is invalid: use a finite number above 0")

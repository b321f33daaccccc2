"""The one exception type of the evaluation package."""

from __future__ import annotations


class EvaluationError(ValueError):
    """Bad input to a split, a metric, a baseline or a report (one-line message)."""

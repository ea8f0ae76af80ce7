"""Small value checks shared by the validating configs (one definition each)."""

from __future__ import annotations


def is_int(value: object) -> bool:
    """True for a real ``int`` (``bool`` is not accepted as a number)."""
    return isinstance(value, int) and not isinstance(value, bool)

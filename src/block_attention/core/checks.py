"""Small value checks shared by the validating configs (one definition each; every other module calls these)."""

from __future__ import annotations


def is_int(value: object) -> bool:
    """True for a real ``int`` (``bool`` is not accepted as a number)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """True for a real ``int`` or ``float`` that is not NaN (``bool`` is not accepted as a number)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # not NaN

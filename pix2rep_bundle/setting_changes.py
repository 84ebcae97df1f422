"""Recorded settings against requested ones: each setting whose value differs, named with both values, so that a
run or a reproduction is reused only with the settings it was made with."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

NOT_SET = "(not set)"


def changed_settings(
    recorded: Mapping[str, Any],
    requested: Mapping[str, Any],
    label: str = "--{}",
    names: Iterable[str] | None = None,
    same: Callable[[str], bool] = lambda name: False,
) -> list[str]:
    """``<label>: recorded -> requested`` (``label`` formatted with the name) for each of ``names`` (default: every
    name of either, sorted) whose values differ, unless ``same(name)`` says the difference changes nothing."""
    names = sorted(set(recorded) | set(requested)) if names is None else names
    return [
        f"{label.format(n)}: {recorded.get(n, NOT_SET)!r} -> {requested.get(n, NOT_SET)!r}"
        for n in names
        if recorded.get(n) != requested.get(n) and not same(n)
    ]

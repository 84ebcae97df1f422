"""Helpers shared by the tests."""

from __future__ import annotations

import re


def find_in_chain(exc: BaseException | None, kind: type, pattern: str) -> bool:
    """Whether an exception of ``kind`` matching ``pattern`` is in the chain (MONAI wraps expression errors)."""
    while exc is not None:
        if isinstance(exc, kind) and re.search(pattern, str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False

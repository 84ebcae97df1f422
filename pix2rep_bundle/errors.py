"""Errors the bundle raises for bad input: each names the file and the problem."""

from __future__ import annotations

import os
from typing import TypeVar

E = TypeVar("E", bound=BaseException)


class PathError(ValueError):
    """A problem with one file or folder; reads ``<path>: <problem>`` (and survives pickling, e.g. from workers)."""

    def __init__(self, path: str | os.PathLike, problem: str):
        super().__init__(os.fspath(path), problem)
        self.path = os.fspath(path)
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


class DataError(PathError):
    """A data file or folder that cannot be used, with the path and what is wrong with it."""


class CheckpointError(PathError):
    """A checkpoint that is missing or does not fit the network it is loaded into."""


def error_in_chain(err: BaseException | None, kind: type[E]) -> E | None:
    """The first exception of ``kind`` in the chain of causes of ``err`` (MONAI wraps transform errors), if any."""
    while err is not None:
        if isinstance(err, kind):
            return err
        err = err.__cause__ or err.__context__
    return None

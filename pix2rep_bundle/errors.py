"""Errors the bundle raises for bad input: each names the file and the problem."""

from __future__ import annotations

import os


class DataError(ValueError):
    """A data file or folder that cannot be used, with the path and what is wrong with it."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class CheckpointError(ValueError):
    """A checkpoint that is missing or does not fit the network it is loaded into."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

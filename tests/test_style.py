"""The Model Zoo's code style on the whole tree: black (120, no magic trailing comma), isort (black profile), flake8
with the Zoo's selection; all configured in pyproject.toml. Fix with ``python -m isort . && python -m black .``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

CHECKS = {
    "black": ["-m", "black", "--check", "--quiet", "."],
    "isort": ["-m", "isort", "--check-only", "--quiet", "."],
    "flake8": ["-m", "flake8", "."],
}


@pytest.mark.parametrize("tool", sorted(CHECKS))
def test_the_tree_follows_the_zoo_code_style(tool):
    result = subprocess.run([sys.executable, *CHECKS[tool]], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, f"{tool} finds:\n{result.stdout}{result.stderr}"


def tracked_files(pattern: str) -> list[Path]:
    """The files git tracks that match ``pattern`` (the tree as it ships)."""
    names = subprocess.run(["git", "ls-files", pattern], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [REPO / name for name in names.split()]


def test_json_files_are_written_as_the_zoo_pretty_format_json_hook_writes_them():
    files = tracked_files("*.json")
    assert files, "no JSON file found (is this a git checkout?)"
    for path in files:
        text = path.read_text()
        assert text == json.dumps(json.loads(text), indent=4) + "\n", f"{path}: not 4-space pretty JSON"


def test_images_stay_under_the_zoo_limit_of_1_mb():
    for path in tracked_files("*.png"):
        assert path.stat().st_size <= 1024 * 1024, f"{path}: {path.stat().st_size} bytes (the Zoo allows 1 MB)"

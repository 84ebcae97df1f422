"""The Model Zoo's code style on the whole tree: black (120, no magic trailing comma), isort (black profile), flake8
with the Zoo's selection; all configured in pyproject.toml. Fix with ``python -m isort . && python -m black .``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHECKS = {
    "black": ["-m", "black", "--check", "--quiet", "."],
    "isort": ["-m", "isort", "--check-only", "--quiet", "."],
    "flake8": ["-m", "flake8", "."],
}


@pytest.mark.parametrize("tool", sorted(CHECKS))
def test_the_tree_follows_the_zoo_code_style(tool):
    result = subprocess.run([sys.executable, *CHECKS[tool]], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, f"{tool} finds:\n{result.stdout}{result.stderr}"

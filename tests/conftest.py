"""Fixtures shared by the test modules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import TINY_FEATURES

from pix2rep_bundle.networks import Pix2RepNet, save_backbone

if os.environ.get(
    "PYTEST_XDIST_WORKER"
):  # `pytest -n 2`: one thread per worker (and its subprocesses), no oversubscription
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    """A randomly initialised tiny Pix2Rep backbone file (features ``TINY_FEATURES``)."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("pretrained") / "pix2rep_backbone.pt"
    save_backbone(Pix2RepNet(TINY_FEATURES, projection_hidden=4, projection_dim=4), path)
    return path

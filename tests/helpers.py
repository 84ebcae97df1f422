"""Helpers shared by the tests."""

from __future__ import annotations

import os
import re
from pathlib import Path

from monai.bundle import ConfigParser


def find_in_chain(exc: BaseException | None, kind: type, pattern: str) -> bool:
    """Whether an exception of ``kind`` matching ``pattern`` is in the chain (MONAI wraps expression errors)."""
    while exc is not None:
        if isinstance(exc, kind) and re.search(pattern, str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


TINY_FEATURES = [4, 4, 8, 8, 16, 8]
REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def parsed_config(config: str | Path | list, overrides: dict | None = None) -> ConfigParser:
    """A ``ConfigParser`` of ``config`` (a name in ``configs/``, a path, or a list merged in order) with ``overrides``
    set as the command line would set them."""
    files = config if isinstance(config, list) else [config]
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in files])  # an absolute path replaces the configs/ folder
    parser.update(overrides or {})
    return parser


def tiny_settings(root) -> dict:
    """Config overrides for fast runs: a few phantom subjects at 48 x 48 (4 mm pixels) and a tiny U-Net."""
    return {
        "bundle_root": str(root),
        "profile": "compact",
        "phantom_subjects": 10,
        "image_size": [48, 48],
        "spacing": [4.0, 4.0],
        "features": TINY_FEATURES,
        "projection_hidden": 8,
        "projection_dim": 8,
        "batch_size": 4,
    }


def train_settings(root) -> dict:
    """:func:`tiny_settings` without the pretraining's own sizes: what a script reading ``train.yaml`` takes."""
    return {k: v for k, v in tiny_settings(root).items() if not k.startswith("projection_")}


def acdc_dir() -> Path:
    """Real ACDC training data: ``PIX2REP_ACDC_DIR``, else ``shared/data/ACDC/training`` beside the project."""
    default = REPO.parent / "shared/data/ACDC/training"
    return Path(os.environ.get("PIX2REP_ACDC_DIR", default))


def load_script(name: str):
    """The module of ``scripts/<name>.py`` (scripts are not a package), imported afresh."""
    import importlib.util

    path = REPO / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def zoo_export(common: list[str], ckpt: str | Path, ts: str | Path):
    """The Model Zoo's ``verify_net_in_out`` and ``ckpt_export`` of ``configs/inference.yaml``'s ``network_def`` with
    the settings ``common``, each asserted to pass; the exported TorchScript module, loaded."""
    import subprocess
    import sys

    import torch

    cli = [sys.executable, "-m", "monai.bundle"]
    meta = ["--meta_file", str(CONFIGS / "metadata.json"), "--config_file", str(CONFIGS / "inference.yaml")]
    done = subprocess.run(
        [*cli, "verify_net_in_out", "network_def", *meta, *common], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 0 and "verified with no error" in done.stdout + done.stderr, done.stderr[-3000:]
    export = ["ckpt_export", "network_def", "--filepath", str(ts), "--ckpt_file", str(ckpt)]
    done = subprocess.run([*cli, *export, *meta, *common], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0 and Path(ts).is_file(), done.stderr[-3000:]
    return torch.jit.load(str(ts))

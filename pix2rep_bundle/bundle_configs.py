"""The bundle's own configs run from Python (the scripts' steps): where they are, a parser of one or several merged
with overrides, and a run of one in this process."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

from pix2rep_bundle.overrides import refuse_unknown

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def config_files(configs: str | Sequence[str]) -> list[str]:
    """The paths of ``configs`` (names in ``configs/``; several are merged left to right)."""
    return [str(CONFIG_DIR / c) for c in ([configs] if isinstance(configs, str) else configs)]


def config_parser(
    configs: str | Sequence[str], overrides: Mapping[str, Any] | None = None, strict: bool = False
) -> ConfigParser:
    """A parser of ``configs`` with ``overrides`` set as the command line sets them. ``strict`` (a script passing on
    its user's settings): ValueError naming every override that is not an id of ``configs`` (``--subject_splt``, or
    ``--help`` taken as a setting), with the nearest known name, before anything is parsed; without it, settings meant
    for another config of the same run (a sweep's ``--overrides``) are set and unused."""
    parser = ConfigParser()
    files = config_files(configs)
    parser.read_config(files[0] if len(files) == 1 else files)
    overrides = dict(overrides or {})
    if strict:
        refuse_unknown(parser.get(), overrides, " + ".join(f"configs/{Path(f).name}" for f in files))
    parser.update(overrides)
    return parser


def run_config(configs: str | Sequence[str], run_id: str, overrides: Mapping[str, Any]) -> float:
    """Run one bundle config (or several merged, left to right) in this process with ``overrides``; return the wall
    time in seconds."""
    from monai.bundle import run

    start = time.perf_counter()
    files = config_files(configs)
    run(run_id, config_file=files[0] if len(files) == 1 else files, **dict(overrides))
    return time.perf_counter() - start


def bundle_settings(bundle_path: str | os.PathLike) -> dict[str, Any]:
    """The input space (``spacing``, ``image_size``), backbone file (``pretrained_ckpt``) and descriptor region
    (``selection_centre_fraction``) of the bundle at ``bundle_path`` (e.g. a copy a MONAI Label app serves), as its
    ``configs/train.yaml`` defines them by default."""
    parser = ConfigParser()
    parser.read_config(os.path.join(os.fspath(bundle_path), "configs", "train.yaml"))
    parser.update({"bundle_root": os.fspath(bundle_path)})
    keys = ("spacing", "image_size", "pretrained_ckpt", "selection_centre_fraction")
    return {key: parser.get_parsed_content(key) for key in keys}

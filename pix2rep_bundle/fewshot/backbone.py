"""The pretrained backbone the sweep's runs share: which file, checked against the sweep's network before any run,
pretrained once (``configs/pretrain.yaml``) when it does not exist yet."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pix2rep_bundle.bundle_configs import config_parser, run_config
from pix2rep_bundle.networks import read_backbone

SHIPPED = Path("models") / "pretrain" / "pix2rep_backbone.pt"
OWN = Path("pretrain") / "pix2rep_backbone.pt"


def choose_backbone(root: Path, out: Path, pretrained_ckpt: str | None) -> Path:
    """``pretrained_ckpt`` if given; else the shipped backbone of the bundle at ``root``, if any; else the sweep's own
    (``<out>/pretrain/``)."""
    if pretrained_ckpt:
        return Path(pretrained_ckpt).resolve()
    return root / SHIPPED if (root / SHIPPED).is_file() else out / OWN


def check_backbone(path: Path, common: Mapping[str, Any]) -> None:
    """Fail at once (not after the first scratch runs) when the backbone was pretrained with other features."""
    features = [int(f) for f in config_parser("train.yaml", common).get_parsed_content("features")]
    pretrained = read_backbone(path)["features"]
    if pretrained != features:
        raise ValueError(
            f"{path}: pretrained with features={pretrained} but the sweep trains features={features}; "
            + "pass --pretrained_ckpt with a matching backbone or the matching --profile/--overrides"
        )


def ensure_backbone(
    path: Path,
    given: bool,
    common: Mapping[str, Any],
    pretrain_overrides: Mapping[str, Any],
    log: Callable[[str], None] = print,
) -> None:
    """Pretrain into ``path`` unless it exists; a ``--pretrained_ckpt`` that does not exist is an error."""
    if path.is_file():
        log(f"pretrained backbone {path} exists: pretraining skipped")
        return
    if given:
        raise FileNotFoundError(f"{path}: --pretrained_ckpt not found (leave it unset to pretrain first)")
    log(f"pretraining into {path} ...")
    seconds = run_config("pretrain.yaml", "pretrain", {**common, "output_dir": str(path.parent), **pretrain_overrides})
    log(f"pretraining done in {seconds:.0f} s")


def ready_backbone(
    path: Path,
    given: bool,
    common: Mapping[str, Any],
    pretrain_overrides: Mapping[str, Any],
    report_only: bool,
    claim: Callable[[], None],
    log: Callable[[str], None] = print,
) -> None:
    """The backbone ready for the runs: an existing one checked before the sweep's folder is claimed (``claim``),
    then, unless ``report_only`` (which needs it to exist), pretrained if missing and checked."""
    existing = path.is_file()
    if existing:
        check_backbone(path, common)  # a backbone of another network stops the sweep before it writes anything
    claim()
    if report_only:
        if not existing:
            raise FileNotFoundError(f"{path}: the backbone of the runs to report is missing")
        return
    ensure_backbone(path, given, common, pretrain_overrides, log)
    if not existing:  # just pretrained (possibly with other --pretrain_overrides)
        check_backbone(path, common)

"""The settings every config of the bundle shares, as rules in one place: the sizes of a profile by name, where the data
comes from and where it is prepared (phantom, prepared and pretrained folders), and its preparation on first use.

Each runnable config (``pretrain.yaml``, ``train.yaml``, ``evaluate.yaml``, ``inference.yaml``) holds the same short
block of literal settings (``configs/common.yaml``), every one a command-line override, and builds
:class:`BundleSettings` from them with ``_target_``; a setting left null takes the rule here. The sizes of a profile
(``image_size``, ``spacing``, ``features``, ``phantom_subjects``) stay config items of their own, read with
:func:`profile_value`, so that ``--image_size [96,96]`` replaces one of them and every reader sees the value in use.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pix2rep_bundle.label_map import parse_label_map
from pix2rep_bundle.settings import choose

# The network and input space by name, never by device. "compact" (the default) is the released network, a small
# U-Net on 128 x 128 slices at 2 mm (field of view 256 mm, every labelled voxel of ACDC kept; docs/README.md,
# "The recipe");
# "paper" is the published scale: a large U-Net whose last block gives D = 1024 channels, 160 x 160 slices at 1.5 mm.
PROFILES: dict[str, dict[str, Any]] = {
    "paper": {
        "image_size": [160, 160],
        "spacing": [1.5, 1.5],
        "features": [128, 256, 512, 1024, 2048, 1024],
        "projection_hidden": 256,
        "projection_dim": 256,
        "phantom_subjects": 100,
    },
    "compact": {
        "image_size": [128, 128],
        "spacing": [2.0, 2.0],
        "features": [16, 16, 32, 64, 128, 32],
        "projection_hidden": 64,
        "projection_dim": 64,
        "phantom_subjects": 20,
    },
}
PRETRAINED_BACKBONE = "pix2rep_backbone.pt"


def profile_value(profile: str, name: str) -> Any:
    """The ``name`` size of ``profile`` (a copy), or a ValueError listing the profiles (``--profile large``)."""
    return copy.deepcopy(choose(PROFILES, profile, "profile")[name])


def source_name(dataset_dir: str | os.PathLike, datalist: str | os.PathLike | None, split: str = "random") -> str:
    """The name of a source's prepared folder: the datalist file's stem, else the data folder's name, with ``_<split>``
    for a published subject split (``ACDC/training`` and ``chaitanya2020``: ``training_chaitanya2020``)."""
    name = Path(datalist).stem if datalist else os.path.basename(os.path.normpath(dataset_dir))
    return name if split == "random" else f"{name}_{split}"


class BundleSettings:
    """Where a config's data comes from and goes, from its literal settings (each null: the rule named below).

    Args:
        bundle_root: the bundle's folder; ``cache/`` and ``models/`` lie in it.
        image_size, spacing: the prepared slices' size and in-plane spacing (mm).
        phantom_subjects, data_seed: the synthetic phantom's size and seed (``data_seed`` also draws the splits).
        dataset_dir: the data (ACDC layout or a folder of NIfTI scans); null: the phantom, made in ``phantom_dir``.
        datalist: a datalist JSON in the Decathlon form, used instead of ``dataset_dir``.
        subject_split: ``random`` or a published split of ACDC (``chaitanya2020``, ``semi_70_10_20``).
        phantom_dir: null: ``<bundle_root>/cache/phantom_n<phantom_subjects>_seed<data_seed>``.
        prepared_dir: null: ``<bundle_root>/cache/prepared/<source name>`` (:func:`source_name`).
        pretrained_dir: the folder of the default backbone; null: ``<bundle_root>/models/pretrain``.
        label_map: ``{structure name: label value}`` of the label files (:mod:`pix2rep_bundle.label_map`); null:
            ACDC's (RV 1, MYO 2, LV 3). Parsed as ``self.label_map`` (a ValueError naming ``--label_map`` when bad).
    """

    def __init__(
        self,
        bundle_root: str | os.PathLike = ".",
        image_size: Sequence[int] = (128, 128),
        spacing: Sequence[float] = (2.0, 2.0),
        phantom_subjects: int = 20,
        data_seed: int = 0,
        dataset_dir: str | os.PathLike | None = None,
        datalist: str | os.PathLike | None = None,
        subject_split: str = "random",
        phantom_dir: str | os.PathLike | None = None,
        prepared_dir: str | os.PathLike | None = None,
        pretrained_dir: str | os.PathLike | None = None,
        label_map: Any = None,
    ) -> None:
        self.bundle_root = bundle_root
        self.label_map = parse_label_map(label_map)
        self.image_size, self.spacing = image_size, spacing
        self.phantom_subjects, self.data_seed = phantom_subjects, data_seed
        self.datalist, self.subject_split = datalist, subject_split
        default_phantom = f"phantom_n{phantom_subjects}_seed{data_seed}"
        self.phantom_dir = self._given(phantom_dir, "cache", default_phantom)
        self.dataset_dir = self.phantom_dir if dataset_dir is None else dataset_dir
        prepared = source_name(self.dataset_dir, datalist, subject_split)
        self.prepared_dir = self._given(prepared_dir, "cache", "prepared", prepared)
        self.pretrained_dir = self._given(pretrained_dir, "models", "pretrain")

    def _given(self, value: str | os.PathLike | None, *default: str) -> str | os.PathLike:
        """``value``, or the path ``default`` inside the bundle when it is null."""
        return os.path.join(self.bundle_root, *default) if value is None else value

    @property
    def pretrained_ckpt(self) -> str:
        """The default Pix2Rep backbone: ``<pretrained_dir>/pix2rep_backbone.pt``."""
        return os.path.join(self.pretrained_dir, PRETRAINED_BACKBONE)

    def prepare(self) -> Path:
        """The prepared datalist (pools pretrain / labeled / validation / test) in ``prepared_dir``, made from the
        source first unless it is there and matches (the phantom is generated first when it is the source)."""
        from pix2rep_bundle.data.preparation import ensure_prepared
        from pix2rep_bundle.data.sources import resolve_dataset_dir

        source = resolve_dataset_dir(
            self.dataset_dir, self.phantom_dir, self.phantom_subjects, self.data_seed, datalist=self.datalist
        )
        return ensure_prepared(
            source,
            self.prepared_dir,
            spacing=self.spacing,
            image_size=self.image_size,
            seed=self.data_seed,
            split=self.subject_split,
            label_map=self.label_map,
        )

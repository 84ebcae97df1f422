"""The label map: which structures a label file holds and under which values (ACDC's by default: RV 1, MYO 2, LV 3;
background 0, always).

Every config that reads labels or writes segmentations takes it from the ``label_map`` setting
(``--label_map '{"LV": 1, "MYO": 2, "RV": 3}'``). The network predicts class indices 0..N in the map's order
(``num_classes`` = background + the map's structures); label files are turned into class indices when they are read
(:meth:`LabelMap.to_classes`, after :meth:`LabelMap.check`, which refuses a value outside the map, naming the file)
and segmentations are written back in the map's values (:meth:`LabelMap.values_transform`). Scores are named by the
map's names (``dice_RV``). With ACDC's map, class indices and file values are the same.
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pix2rep_bundle.errors import CheckpointError, DataError

SETTING = "--label_map"
RESERVED_NAMES = ("background", "mean")  # background is class 0; "mean" names the mean column of the scores
MAX_VALUE = 32767  # label files of any integer type up to int16
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
EXAMPLE = '--label_map \'{"RV": 1, "MYO": 2, "LV": 3}\''


@dataclass(frozen=True)
class LabelMap:
    """Structure names and their label file values, in class order (class 0, background, value 0, is implicit)."""

    names: tuple[str, ...]
    values: tuple[int, ...]

    @property
    def num_classes(self) -> int:
        """Background and the structures: the network's output channels."""
        return len(self.names) + 1

    @property
    def class_indices(self) -> tuple[int, ...]:
        """The structures' class indices, 1..N."""
        return tuple(range(1, self.num_classes))

    @property
    def file_values(self) -> tuple[int, ...]:
        """Every value a label file may hold: 0 and the structures' values."""
        return (0, *self.values)

    @property
    def is_identity(self) -> bool:
        """Whether file values and class indices are the same (ACDC's map is)."""
        return self.values == self.class_indices

    @property
    def output_dtype(self) -> Any:
        """The smallest integer type of a segmentation file that holds every value (uint8 up to 255, else int16)."""
        return np.uint8 if max(self.values) <= 255 else np.int16

    def as_dict(self) -> dict[str, int]:
        """``{name: value}`` in class order (what the run records)."""
        return dict(zip(self.names, self.values))

    def describe(self) -> str:
        """``RV 1, MYO 2, LV 3``."""
        return ", ".join(f"{n} {v}" for n, v in zip(self.names, self.values))

    def indexed(self) -> LabelMap:
        """The same structures under their class indices (what prepared label volumes hold)."""
        return LabelMap(self.names, self.class_indices)

    def check(self, label: np.ndarray, path: str | os.PathLike) -> None:
        """DataError naming ``path`` and the offending values when ``label`` holds a value outside the map."""
        values = np.unique(np.asarray(label))
        bad = values[~np.isin(values, self.file_values)]
        if bad.size:
            shown = ", ".join(f"{v:g}" for v in bad[:10]) + (", ..." if bad.size > 10 else "")
            known = tuple(sorted(self.file_values))
            span = f"0..{known[-1]}" if known == tuple(range(self.num_classes)) else ", ".join(map(str, known))
            raise DataError(
                Path(path),
                f"label values outside {span}: {shown} (the label map {self.describe()}, 0 background; "
                + f"{SETTING} gives another)",
            )

    def to_classes(self, label: np.ndarray) -> np.ndarray:
        """A label array of file values (checked) as class indices 0..N (uint8); unchanged values for ACDC's map."""
        array = np.rint(np.asarray(label))
        if self.is_identity:
            return array
        out = np.zeros(array.shape, dtype=np.uint8)
        for index, value in zip(self.class_indices, self.values):
            out[array == value] = index
        return out

    def to_values(self, classes: np.ndarray) -> np.ndarray:
        """An array of class indices 0..N as the map's file values."""
        classes = np.asarray(classes).astype(np.int64)
        return np.asarray(self.file_values, dtype=np.int64)[classes]

    def values_transform(self, keys: Any = "pred") -> Any:
        """Dictionary transform from class indices to the map's file values (MONAI's ``MapLabelValued``; nothing to
        do for ACDC's map)."""
        from monai.transforms import Identityd, MapLabelValued

        if self.is_identity:
            return Identityd(keys)
        return MapLabelValued(keys, (0, *self.class_indices), self.file_values, dtype=self.output_dtype)


DEFAULT_LABEL_MAP = LabelMap(("RV", "MYO", "LV"), (1, 2, 3))


def _problem(message: str, value: Any) -> ValueError:
    return ValueError(f"{SETTING}: {message}, got {value!r}; e.g. {EXAMPLE}")


def _as_mapping(value: Any) -> Mapping:
    """The setting as a mapping (a command line may give it as text: JSON or a Python dict literal)."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            raise _problem("not a mapping of structure names to label values", value) from None
    if not isinstance(value, Mapping):
        raise _problem("not a mapping of structure names to label values", value)
    if not value:
        raise _problem("empty: name at least one structure", value)
    return value


def parse_label_map(value: Any = None) -> LabelMap:
    """The :class:`LabelMap` of the ``label_map`` setting (``None``: ACDC's); ValueError naming ``--label_map`` when
    it is not a mapping, is empty, has a name that is not a plain name (letters, digits, ``_``, ``-``) or is reserved
    (``background``, ``mean``), names twice (any case), repeats a value, or a value that is not an integer in
    1..32767 (0 is background)."""
    if value is None:
        return DEFAULT_LABEL_MAP
    if isinstance(value, LabelMap):
        return value
    mapping = _as_mapping(value)
    names, values = [], []
    for name, label in mapping.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise _problem(f"structure name {name!r} is not a plain name (letters, digits, _ and -)", value)
        if name.lower() in RESERVED_NAMES:
            raise _problem(f"structure name {name!r} is reserved ({', '.join(RESERVED_NAMES)})", value)
        if name.lower() in (n.lower() for n in names):
            raise _problem(f"structure name {name!r} given twice", value)
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 1 <= label <= MAX_VALUE:
            raise _problem(
                f"{name}: label value {label!r} is not an integer in 1..{MAX_VALUE} (0 is background)", value
            )
        if int(label) in values:
            raise _problem(f"label value {label} given to two structures", value)
        names.append(name)
        values.append(int(label))
    return LabelMap(tuple(names), tuple(values))


def structure_values(value: Any, wanted: Sequence[str] = ("RV", "MYO", "LV")) -> dict[str, int]:
    """``{name: value}`` of the structures ``wanted`` (any case) in the label map ``value``; ValueError naming
    ``--label_map`` and the missing names when the map lacks one."""
    label_map = parse_label_map(value)
    by_name = {n.upper(): v for n, v in label_map.as_dict().items()}
    missing = [w for w in wanted if w.upper() not in by_name]
    if missing:
        raise ValueError(
            f"{SETTING} ({label_map.describe()}) lacks {', '.join(missing)}: {', '.join(wanted)} are needed"
        )
    return {w: by_name[w.upper()] for w in wanted}


def require_acdc_map(value: Any, tool: str) -> None:
    """ValueError naming ``--label_map`` when ``value`` is not ACDC's map: ``tool`` reports RV, MYO and LV only."""
    label_map = value if isinstance(value, LabelMap) else parse_label_map(value)
    if label_map != DEFAULT_LABEL_MAP:
        raise ValueError(
            f"{SETTING} ({label_map.describe()}): {tool} reports ACDC's structures (RV 1, MYO 2, LV 3) only; "
            + "train.yaml, evaluate.yaml, inference.yaml and scripts/cardiac_indices.py take other maps"
        )


def check_model_labels(ckpt_path: str | os.PathLike, label_map: LabelMap) -> LabelMap:
    """``label_map``, unless the training run that wrote ``ckpt_path`` recorded another one (``run_info.json``
    beside it): then a CheckpointError naming the file and both maps. A model without a record of its map (the
    shipped one, runs made before the setting existed) is not checked; its number of classes is, when it is loaded."""
    from pix2rep_bundle.run_record import recorded_settings

    settings = recorded_settings(Path(ckpt_path).parent) or {}
    recorded = settings.get("label_map")
    if isinstance(recorded, Mapping) and list(recorded.items()) != list(label_map.as_dict().items()):  # order too
        raise CheckpointError(
            ckpt_path,
            f"trained with the label map {dict(recorded)} ({Path(ckpt_path).parent / 'run_info.json'}), "
            + f"this run uses {label_map.as_dict()}: pass --label_map '{_json(recorded)}'",
        )
    return label_map


def _json(mapping: Mapping) -> str:
    import json

    return json.dumps(dict(mapping))

"""A MONAI datalist JSON in the Decathlon form as a data source, read with ``monai.data.load_decathlon_datalist``:

    {"training": [{"image": "a/scan.nii.gz", "label": "a/scan_gt.nii.gz"}, ...],
     "validation": [{"image": ...}, ...], "test": [{"image": ...} or "path", ...]}

- Paths are relative to the JSON file (or absolute). ``label`` is optional; ``training`` is required, ``validation``
  and ``test`` are optional (a missing or empty one is drawn from the training subjects).
- An entry's image is a 3D volume or a 4D cine (one volume per frame).
- Subjects: entries with the same ``subject`` key are one subject (e.g. the ED and ES frames of a patient); an entry
  without one is a subject of its own. A subject lies in one pool only. An optional ``group`` key stratifies the
  drawn splits.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pix2rep_bundle.data.folder import file_volumes, safe_name
from pix2rep_bundle.data.records import UNKNOWN_GROUP, Source, Subject, nifti_stem
from pix2rep_bundle.errors import DataError

POOLS = ("training", "validation", "test")
FORM = '{"training": [{"image": ..., "label": ...}, ...], "validation": [...], "test": [...]}'


def _read_json(path: Path) -> dict:
    """The JSON content; DataError naming the file when it is missing, unreadable or not a Decathlon datalist."""
    if not path.is_file():
        raise DataError(path, "datalist file not found")
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(path, f"not a readable JSON file ({err})") from err
    if not isinstance(content, dict) or not isinstance(content.get("training"), list) or not content["training"]:
        raise DataError(path, f"not a datalist in the Decathlon form: expected {FORM} with a non-empty 'training'")
    for pool in POOLS:
        entries = content.get(pool, [])
        if not isinstance(entries, list):
            raise DataError(path, f"'{pool}' is not a list of entries (expected {FORM})")
        for number, entry in enumerate(entries, start=1):
            image = entry.get("image") if isinstance(entry, dict) else entry if pool == "test" else None
            if not isinstance(image, str):
                raise DataError(path, f"{pool} entry {number} has no 'image' path (expected {FORM}): {entry!r}")
            if isinstance(entry, dict) and "label" in entry and not isinstance(entry["label"], str):
                raise DataError(
                    path, f"{pool} entry {number}: 'label' is not a path (leave it out where there is none)"
                )
    return content


def _entries(path: Path, content: dict) -> dict[str, list[dict]]:
    """The non-empty pools, their paths made absolute by ``load_decathlon_datalist``."""
    from monai.data import load_decathlon_datalist

    return {
        pool: load_decathlon_datalist(path, is_segmentation=True, data_list_key=pool)
        for pool in POOLS
        if content.get(pool)
    }


def _check_files(path: Path, pools: dict[str, list[dict]]) -> None:
    """DataError naming the entry when its image or label is missing, or a file is listed twice."""
    seen: dict[Path, str] = {}
    for pool, entries in pools.items():
        for number, entry in enumerate(entries, start=1):
            where = f"{pool} entry {number} of {path.name}"
            for key in ("image", "label"):
                if key not in entry:
                    continue
                file = Path(entry[key]).resolve()
                if not file.is_file():
                    raise DataError(entry[key], f"{key} of {where} not found")
                if file in seen:
                    raise DataError(entry[key], f"listed twice in {path.name}: as {seen[file]} and as {key} of {where}")
                seen[file] = f"{key} of {where}"


def _subject_of(path: Path, entry: dict) -> str:
    """The entry's ``subject`` key, else its image path relative to the JSON's folder, without extension."""
    if entry.get("subject") not in (None, ""):
        return str(entry["subject"])
    image = Path(entry["image"])
    relative = Path(os.path.relpath(image, path.parent.resolve()))
    return (relative.parent / nifti_stem(image)).as_posix()


def _subjects(path: Path, pools: dict[str, list[dict]]) -> list[Subject]:
    """Entries grouped into subjects, in order of first appearance; DataError for a subject in two pools."""
    subjects: dict[str, Subject] = {}
    for pool, entries in pools.items():
        for entry in entries:
            name = _subject_of(path, entry)
            subject = subjects.get(name)
            if subject is None:
                group = str(entry.get("group") or UNKNOWN_GROUP)
                subject = subjects[name] = Subject(name, group, [], Path(entry["image"]), pool=pool)
            elif subject.pool != pool:
                raise DataError(
                    path, f"subject {name!r} is in '{subject.pool}' and in '{pool}': a subject lies in one pool only"
                )
            image, label = Path(entry["image"]), Path(entry["label"]) if "label" in entry else None
            volume_name = safe_name(f"{name}/{nifti_stem(image)}")
            subject.volumes += file_volumes(image, label, volume_name, first_frame=len(subject.volumes) + 1)
            subject.files += [image] if label is None else [image, label]
    return list(subjects.values())


def datalist_source(path: str | os.PathLike) -> Source:
    """The subjects of a datalist JSON in the Decathlon form (module docstring); DataError naming the file or the
    entry for a file that is not such a datalist, a missing image or label, a file listed twice, or a subject in two
    pools."""
    path = Path(path)
    content = _read_json(path)
    try:
        pools = _entries(path, content)
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise DataError(path, f"not a datalist in the Decathlon form ({type(err).__name__}: {err})") from err
    _check_files(path, pools)
    return Source("datalist", path, _subjects(path, pools), files=[path])

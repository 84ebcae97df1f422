"""The one reader of ACDC's ``Info.cfg`` (``key: value`` lines: ED, ES, Group, Height, Weight, NbFrame)."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from pix2rep_bundle.errors import DataError

# Fields holding a frame number (frames count from 1) or a frame count.
FRAME_FIELDS = ("ED", "ES", "NbFrame")
# Fields holding a body measure (height in cm, weight in kg): positive finite numbers.
MEASURE_FIELDS = ("Height", "Weight")
# A whole number as ACDC writes it ("12"), or with a zero fraction ("12.0").
_WHOLE = re.compile(r"^\+?(\d+)(\.0*)?$")


def _whole_number(path: Path, key: str, value: str) -> int:
    """``value`` of field ``key`` as a whole number >= 1; DataError naming the file, the field and the value."""
    match = _WHOLE.match(value)
    if match is None or int(match[1]) < 1:
        raise DataError(path, f"Info.cfg field '{key}' is not a whole number >= 1: {value!r}")
    return int(match[1])


def _check_fields(path: Path, info: dict[str, str]) -> None:
    """DataError naming the field and the value for a frame field that is not a whole number, an ED/ES beyond
    NbFrame, or a Height/Weight that is not a positive number."""
    frames = {key: _whole_number(path, key, info[key]) for key in FRAME_FIELDS if key in info}
    count = frames.get("NbFrame")
    for key in ("ED", "ES"):
        if count is not None and key in frames and frames[key] > count:
            raise DataError(path, f"Info.cfg field '{key}' is {info[key]!r}, outside frames 1..{count} (NbFrame)")
    for key in (k for k in MEASURE_FIELDS if k in info):
        try:
            value = float(info[key])
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value <= 0:
            raise DataError(path, f"Info.cfg field '{key}' is not a positive number: {info[key]!r}")


def read_info_cfg(path: str | os.PathLike, required: tuple[str, ...] = ()) -> dict[str, str]:
    """Parse ``Info.cfg`` into a dict of strings; DataError naming the file when it is missing or unreadable, lacks
    one of the ``required`` keys, has a line that is not ``key: value`` or a field given twice, or a known field
    whose value cannot be read truly (ED, ES, NbFrame whole numbers >= 1 with ED, ES <= NbFrame; Height, Weight
    positive numbers)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise DataError(path, "Info.cfg not found (every patientXXX folder needs one with ED and ES)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(path, f"cannot read Info.cfg ({err})") from err
    info: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        key, colon, value = (part.strip() for part in line.partition(":"))
        if not colon or not key:
            raise DataError(path, f"Info.cfg line {number} is not 'field: value': {line!r}")
        if key in info:
            raise DataError(path, f"Info.cfg field '{key}' is given twice ({info[key]!r} and {value!r}): keep one")
        info[key] = value
    missing = [key for key in required if key not in info]
    if missing:
        raise DataError(path, f"Info.cfg lacks {', '.join(missing)}")
    _check_fields(path, info)
    return info

"""The one reader of ACDC's ``Info.cfg`` (``key: value`` lines: ED, ES, Group, Height, Weight, NbFrame)."""

from __future__ import annotations

import os
from pathlib import Path

from pix2rep_bundle.errors import DataError


def read_info_cfg(path: str | os.PathLike, required: tuple[str, ...] = ()) -> dict[str, str]:
    """Parse ``Info.cfg`` into a dict of strings; DataError naming the file when it is missing or unreadable, or
    lacks one of the ``required`` keys."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise DataError(path, "Info.cfg not found (every patientXXX folder needs one with ED and ES)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(path, f"cannot read Info.cfg ({err})") from err
    info = {}
    for line in lines:
        if ":" in line:
            key, value = line.split(":", 1)
            info[key.strip()] = value.strip()
    missing = [key for key in required if key not in info]
    if missing:
        raise DataError(path, f"Info.cfg lacks {', '.join(missing)}")
    return info

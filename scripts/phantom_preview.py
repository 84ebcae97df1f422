"""The phantom's preview figure: short-axis slices of a few subjects (rows: subject x frame; columns: slices base to
apex) with RV/MYO/LV contours. Used by ``scripts/make_phantom.py --preview``; also on its own:

    python scripts/phantom_preview.py --folder cache/phantom --png docs/phantom_preview.png --overwrite true
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pix2rep_bundle.data.phantom import LABELS, PhantomSubject, read_info, subject_name
from pix2rep_bundle.data.records import frame_file
from pix2rep_bundle.errors import DataError
from pix2rep_bundle.io import atomic_path, refuse_existing_file

_CONTOUR_COLOURS = {"RV": "#ff4040", "MYO": "#40e040", "LV": "#40a0ff"}


def _load_dir_subjects(folder: Path, subject_ids: Sequence[int | str] | None, max_subjects: int) -> list[dict]:
    """Read ED/ES images (and labels when present) of a few subjects of an ACDC-layout folder."""
    from pix2rep_bundle.data.volume_checks import load_nifti

    dirs = sorted(p for p in folder.iterdir() if p.is_dir() and (p / "Info.cfg").is_file())
    if subject_ids is not None:
        names = {subject_name(i) if isinstance(i, int) else str(i) for i in subject_ids}
        dirs = [d for d in dirs if d.name in names]
    else:
        dirs = _one_per_group(dirs, max_subjects)
    if not dirs:
        raise DataError(folder, "no patientXXX/ folder with an Info.cfg to preview")
    out = []
    for d in dirs[:max_subjects]:
        info = read_info(d / "Info.cfg")
        frames = {}
        for key in ("ED", "ES"):
            f = int(info[key])
            image, affine = load_nifti(frame_file(d, d.name, f))
            gt = frame_file(d, d.name, f, "_gt")
            frames[key] = (f, image, np.rint(load_nifti(gt)[0]).astype(np.uint8) if gt.exists() else None)
        out.append(
            {
                "name": d.name,
                "group": info["Group"],
                "frames": frames,
                "spacing": tuple(float(z) for z in np.linalg.norm(affine[:3, :3], axis=0)),
            }
        )
    return out


def _one_per_group(dirs: list[Path], max_subjects: int) -> list[Path]:
    """Subjects of distinct groups first (in folder order), then the others."""
    seen, first, rest = set(), [], []
    for d in dirs:
        group = read_info(d / "Info.cfg")["Group"]
        (rest if group in seen else first).append(d)
        seen.add(group)
    return (first + rest)[:max_subjects]


def _subject_rows(subjects: Sequence[PhantomSubject], max_subjects: int) -> list[dict]:
    """The preview's view of in-memory subjects."""
    return [
        {
            "name": s.name,
            "group": s.group,
            "spacing": s.spacing,
            "frames": {
                "ED": (s.ed_frame, s.images[s.ed_frame], s.labels[s.ed_frame]),
                "ES": (s.es_frame, s.images[s.es_frame], s.labels[s.es_frame]),
            },
        }
        for s in list(subjects)[:max_subjects]
    ]


def draw_preview(
    subjects_or_dir: Sequence[PhantomSubject] | str | os.PathLike,
    png_path: str | os.PathLike,
    subject_ids: Sequence[int | str] | None = None,
    max_subjects: int = 4,
    frames: Sequence[str] = ("ED", "ES"),
    max_slices: int = 8,
    panel_inches: float = 2.2,
    dpi: int = 64,
) -> Path:
    """Grid of short-axis slices (rows: subject x frame; columns: slices base -> apex) with label contours.

    ``subjects_or_dir`` is a list of PhantomSubject or an ACDC-layout folder (then subjects of distinct
    groups are preferred). The PNG is written atomically; returns its path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(subjects_or_dir, (str, os.PathLike)):
        rows_data = _load_dir_subjects(Path(subjects_or_dir), subject_ids, max_subjects)
    else:
        rows_data = _subject_rows(subjects_or_dir, max_subjects)
    rows = [(s, key) for s in rows_data for key in frames]
    ncols = min(max_slices, max(s["frames"][k][1].shape[2] for s, k in rows))
    fig, axes = plt.subplots(
        len(rows),
        ncols,
        figsize=(ncols * panel_inches, len(rows) * panel_inches * 1.08),
        squeeze=False,
        facecolor="black",
    )
    for (s, key), ax_row in zip(rows, axes):
        frame, image, label = s["frames"][key]
        _draw_row(ax_row, image, label, f"{s['name']} {s['group']} {key} (frame {frame:02d})")
    handles = [plt.Line2D([], [], color=c, label=n) for n, c in _CONTOUR_COLOURS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False, labelcolor="white")
    fig.tight_layout(rect=(0, 0.03, 1, 1), pad=0.3)
    png_path = Path(png_path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="black")
    plt.close(fig)
    with atomic_path(png_path) as tmp:  # a 256-colour palette: about a third of the RGBA size (Zoo limit: 1 MB)
        Image.open(buffer).convert("RGB").quantize(colors=256).save(tmp, format="PNG", optimize=True)
    return png_path


def _draw_row(ax_row, image: np.ndarray, label: np.ndarray | None, title: str) -> None:
    """One preview row: slices chosen evenly from base to apex, gray image, label contours."""
    nz = image.shape[2]
    idx = np.unique(np.rint(np.linspace(0, nz - 1, min(len(ax_row), nz))).astype(int))
    lo, hi = np.percentile(image, [0.5, 99.5])
    for col, ax in enumerate(ax_row):
        ax.axis("off")
        if col >= len(idx):
            continue
        z = idx[col]
        ax.imshow(image[:, :, z].T, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        if label is not None:
            for name, colour in _CONTOUR_COLOURS.items():
                mask = (label[:, :, z] == LABELS[name]).T
                if mask.any():
                    ax.contour(mask.astype(np.float32), levels=[0.5], colors=colour, linewidths=0.7)
        ax.set_title(
            f"{title}\nslice {z + 1}/{nz}" if col == 0 else f"slice {z + 1}/{nz}", fontsize=6, color="white", loc="left"
        )


if __name__ == "__main__":
    import fire

    from pix2rep_bundle.settings import as_bool

    def main(folder: str, png: str, max_subjects: int = 4, overwrite: bool = False) -> None:
        """Preview of an ACDC-layout folder into ``png`` (an existing file is replaced only with ``overwrite``)."""
        refuse_existing_file(png, as_bool(overwrite, "overwrite"))
        print(draw_preview(folder, png, max_subjects=max_subjects))

    fire.Fire(main)

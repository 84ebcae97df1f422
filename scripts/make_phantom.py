"""Generate the synthetic short-axis cardiac cine MR phantom in the ACDC layout, optionally with a preview.

    python scripts/make_phantom.py --out_dir cache/phantom --num_subjects 100 --seed 0 [--with_cine] \
        [--num_workers 2] [--preview docs/phantom_preview.png --overwrite_preview true]

Writes ``out_dir/patientXXX/`` folders (ED/ES frames, labels, ``Info.cfg``, ``_4d`` with --with_cine) and the
marker ``out_dir/phantom.json``, atomically. The preview shows up to four subjects of distinct groups, ED and
ES, slices base to apex, with RV/MYO/LV contours.
"""

from __future__ import annotations

import time

import fire
from phantom_preview import draw_preview  # scripts/phantom_preview.py (the script's folder is first on sys.path)

from pix2rep_bundle.data.phantom import write_phantom
from pix2rep_bundle.io import refuse_existing_file
from pix2rep_bundle.settings import as_bool, check_settings


def main(
    out_dir: str = "cache/phantom",
    num_subjects: int = 100,
    seed: int = 0,
    first_id: int = 1,
    with_cine: bool = False,
    num_workers: int = 0,
    preview: str | None = None,
    preview_subjects: int = 4,
    overwrite_preview: bool = False,
) -> str:
    """Write the phantom to ``out_dir`` (and the preview PNG to ``preview``, replacing an existing file only with
    ``overwrite_preview``); return ``out_dir``."""
    check_settings({"seed": seed, "num_workers": num_workers})
    with_cine = as_bool(with_cine, "with_cine")
    if preview:
        refuse_existing_file(preview, as_bool(overwrite_preview, "overwrite_preview"))
    start = time.perf_counter()
    write_phantom(
        out_dir, num_subjects=num_subjects, seed=seed, first_id=first_id, with_cine=with_cine, num_workers=num_workers
    )
    if preview:
        png = draw_preview(out_dir, preview, max_subjects=preview_subjects)
        print(f"preview: {png}")
    print(f"total: {time.perf_counter() - start:.1f} s")
    return str(out_dir)


if __name__ == "__main__":
    fire.Fire(main)

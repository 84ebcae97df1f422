"""Clinical indices of segmentations (LV/RV volumes, stroke volume, ejection fraction, myocardial mass) and, where
there is a ground truth, their agreement with it (Pearson r, bias, 95 % limits of agreement, Bland-Altman plot).

    python -m monai.bundle run --config_file configs/inference.yaml --dataset_dir /data/ACDC/training \
        --subject_split semi_70_10_20 --output_dir /tmp/segs
    python scripts/cardiac_indices.py --segmentations /tmp/segs --dataset_dir /data/ACDC/training \
        --out /tmp/indices.csv --figure /tmp/bland_altman.png

Writes ``--out`` (one row per subject: subject, lv_edv_ml, lv_esv_ml, lv_sv_ml, lv_ef, rv_edv_ml, rv_esv_ml,
rv_sv_ml, rv_ef, myo_mass_g) and, where ``--dataset_dir`` holds ``*_gt`` labels, ``<out>_truth.csv`` (the same from
the ground truth) and ``<out>_agreement.csv`` (one row per index). See ``pix2rep_bundle.cardiac_indices``.
"""

from __future__ import annotations

import sys

from pix2rep_bundle.cardiac_indices import (
    AGREEMENT_COLUMNS,
    agreement_table,
    check_outputs,
    compute_indices,
    write_outputs,
)
from pix2rep_bundle.command_line import fire_cli
from pix2rep_bundle.settings import as_bool


def _print_agreement(rows: list[dict]) -> None:
    """The agreement table on stdout."""
    print(f"{'index':<12}{'n':>4}{'r':>8}{'bias':>9}{'LoA low':>10}{'LoA high':>10}")
    for row in rows:
        print(
            f"{row['index']:<12}{row['n']:>4}{row['pearson_r']:>8.3f}{row['bias']:>9.2f}"
            + f"{row['loa_low']:>10.2f}{row['loa_high']:>10.2f}"
        )


def main(
    segmentations: str,
    out: str,
    dataset_dir: str | None = None,
    figure: str | None = None,
    labels: str | None = None,
    postfix: str = "seg",
    overwrite: bool = False,
    label_map: str | dict | None = None,
) -> None:
    """Compute the indices of every subject segmented below ``segmentations`` and write them.

    Args:
        segmentations: folder of ``<subject>_frameYY_<postfix>.nii.gz`` frames or ``<subject>[_4d]_<postfix>.nii.gz``
            cines (searched recursively).
        out: the CSV to write.
        dataset_dir: ACDC-layout folder: ``<subject>/Info.cfg`` gives ED and ES (else the LV volume curve does),
            ``<subject>/<subject>_frameYY_gt.nii.gz`` the ground truth.
        figure: a PNG for the Bland-Altman plot (needs ground truth).
        labels: the label value of each structure, ``rv=1,myo=2,lv=3`` (the default).
        label_map: instead of ``labels``, the bundle's ``--label_map`` setting as ``configs/inference.yaml`` took it
            (``'{"LV": 1, "MYO": 2, "RV": 3}'``); it must name RV, MYO and LV.
        postfix: the segmentations' name postfix (``output_postfix`` of ``configs/inference.yaml``).
        overwrite: replace existing output files.
    """
    overwrite = as_bool(overwrite, "overwrite")
    check_outputs(out, figure, overwrite)
    results = compute_indices(segmentations, dataset_dir, labels, str(postfix), label_map=label_map)
    written = write_outputs(results, out, figure, overwrite)
    print(f"cardiac indices: {len(results)} subjects -> {written['indices']}")
    if "agreement" in written:
        rows = agreement_table(results)
        print(f"agreement with the ground truth of {rows[0]['n']} subjects ({', '.join(AGREEMENT_COLUMNS[2:])}):")
        _print_agreement(rows)
        print(f"wrote {', '.join(str(p) for p in written.values())}")


def cli(argv: list[str] | None = None) -> int:
    """Run the command line; bad input or an existing output prints one line and gives exit status 1."""
    return fire_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())

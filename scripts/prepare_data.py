"""Prepare a data source (an ACDC-layout folder, a plain folder of NIfTI scans, or a datalist JSON in the Decathlon
form given as ``--dataset_dir``) into 2D-ready volumes and a subject-level datalist.

    python scripts/prepare_data.py --dataset_dir /path/to/ACDC/training --output_dir cache/prepared \
        --spacing "[1.5,1.5]" --image_size "[128,128]" --seed 0 [--include_cine] [--num_workers 2] [--reuse]

Writes ``output_dir/volumes/*.nii.gz`` and ``output_dir/datalist.json`` atomically and prints a summary
(subjects per split and group, volumes and slices per pool, time). ``--reuse`` keeps an existing output made
from the same source with the same parameters. A bad input prints one line naming the file and exits 1.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import fire

from pix2rep_bundle.data.datasets import summarize_datalist
from pix2rep_bundle.data.preparation import prepare_dataset
from pix2rep_bundle.settings import as_bool, check_settings


def prepare(
    dataset_dir: str,
    output_dir: str = "cache/prepared",
    spacing: tuple = (1.5, 1.5),
    image_size: tuple = (128, 128),
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    include_cine: bool = False,
    num_workers: int = 0,
    reuse: bool = False,
) -> None:
    """Prepare ``dataset_dir`` into ``output_dir`` and print a summary."""
    check_settings({"spacing": spacing, "image_size": image_size, "seed": seed, "num_workers": num_workers})
    include_cine = as_bool(include_cine, "include_cine")
    start = time.perf_counter()
    datalist = prepare_dataset(
        dataset_dir,
        output_dir,
        spacing=tuple(spacing),
        image_size=tuple(image_size),
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        include_cine=include_cine,
        num_workers=num_workers,
        reuse=as_bool(reuse, "reuse"),
    )
    print_summary(summarize_datalist(datalist), datalist, time.perf_counter() - start)


def print_summary(summary: dict, datalist: Path, seconds: float) -> None:
    """Print subjects per split and group, then volumes and slices per pool."""
    print(f"datalist: {datalist}")
    for split, counts in summary["subjects"].items():
        groups = ", ".join(f"{g} {n}" for g, n in counts.items() if g != "total")
        print(f"  {split:<10} {counts['total']:>4} subjects ({groups})")
    for pool, volumes in summary["volumes"].items():
        print(f"  {pool:<10} {volumes:>5} volumes {summary['slices'][pool]:>6} slices")
    print(f"time: {seconds:.1f} s")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; a DataError or a bad setting prints one line and gives exit status 1."""
    try:
        fire.Fire(prepare, command=argv)
    except ValueError as err:  # a DataError or a setting that does not fit
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

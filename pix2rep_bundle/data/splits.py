"""Subject-level splits of a data source: drawn from a seed (stratified by pathology group where the source has
groups), the pools a datalist JSON gives, or a published split of ACDC (:mod:`pix2rep_bundle.data.published_splits`).
Never by slice: a subject's slices stay together."""

from __future__ import annotations

import os
from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np

from pix2rep_bundle.data.published_splits import check_split, named_pools
from pix2rep_bundle.errors import DataError

if TYPE_CHECKING:
    from pix2rep_bundle.data.acdc import SubjectRecord
    from pix2rep_bundle.data.records import Source, Subject


def _round(x: float) -> int:
    """Round half up (Python's ``round`` rounds half to even)."""
    return int(np.floor(x + 0.5))


def _split_count(total: int, fraction: float) -> int:
    """Subjects for a held-out split: ``fraction`` of ``total``, at least one when ``fraction`` > 0."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"split fractions must be in [0, 1), got {fraction}")
    return max(1, _round(total * fraction)) if fraction > 0 else 0


def _allocate(sizes: dict[str, int], total: int, rng: np.random.Generator) -> dict[str, int]:
    """Share ``total`` among groups in proportion to ``sizes`` (largest remainder, seeded tie-break)."""
    n = sum(sizes.values())
    groups = sorted(sizes)
    quota = {g: total * sizes[g] / n for g in groups}
    counts = {g: min(sizes[g], int(np.floor(quota[g]))) for g in groups}
    noise = rng.random(len(groups))
    order = sorted(range(len(groups)), key=lambda i: (-(quota[groups[i]] - counts[groups[i]]), noise[i]))
    remaining = total - sum(counts.values())
    while remaining > 0:
        for i in order:
            g = groups[i]
            if remaining > 0 and counts[g] < sizes[g]:
                counts[g] += 1
                remaining -= 1
    return counts


def split_subjects(
    subjects: list[SubjectRecord], seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2
) -> dict[str, list[str]]:
    """Disjoint ``train``/``validation``/``test`` subject ids, stratified by pathology group, from ``seed``.

    The test and validation sizes are ``fraction * N`` rounded (at least one subject when the fraction is
    positive), shared among groups in proportion to their sizes; the result depends only on the subjects
    and ``seed``, not on their order.
    """
    by_group: dict[str, list[str]] = defaultdict(list)
    for record in sorted(subjects, key=lambda r: r.subject):
        by_group[record.group].append(record.subject)
    total = sum(len(v) for v in by_group.values())
    n_test, n_val = _split_count(total, test_fraction), _split_count(total, val_fraction)
    if total - n_test - n_val < 1:
        raise ValueError(f"{total} subjects cannot give {n_test} test, {n_val} validation and >= 1 training")
    rng = np.random.default_rng(seed)
    shuffled = {g: [ids[i] for i in rng.permutation(len(ids))] for g, ids in sorted(by_group.items())}
    test_counts = _allocate({g: len(v) for g, v in shuffled.items()}, n_test, rng)
    rest = {g: v[test_counts[g] :] for g, v in shuffled.items()}
    val_counts = _allocate({g: len(v) for g, v in rest.items() if v}, n_val, rng)
    splits = {"train": [], "validation": [], "test": []}
    for g, ids in shuffled.items():
        splits["test"] += ids[: test_counts[g]]
        splits["validation"] += rest[g][: val_counts.get(g, 0)]
        splits["train"] += rest[g][val_counts.get(g, 0) :]
    return {name: sorted(ids) for name, ids in splits.items()}


def subject_splits(
    subjects: list[SubjectRecord],
    split: str,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    dataset_dir: str | os.PathLike,
) -> dict[str, list[str]]:
    """``train``/``validation``/``test`` (and ``pretrain``, the unlabelled pool) subject ids: drawn from ``seed``
    (``split="random"``; ``pretrain`` is ``train``) or a published split (all its subjects must be present)."""
    if check_split(split) == "random":
        splits = split_subjects(subjects, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
        return {**splits, "pretrain": list(splits["train"])}
    pools = named_pools(split)
    present = {r.subject for r in subjects}
    missing = sorted({s for ids in pools.values() for s in ids} - present)
    if missing:
        raise DataError(
            dataset_dir,
            f"split {split} needs ACDC subjects that are not here: {', '.join(missing[:8])}"
            f"{' ...' if len(missing) > 8 else ''} ({len(missing)} missing)",
        )
    return pools


def given_splits(
    subjects: list[Subject], seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2
) -> dict[str, list[str]]:
    """The pools of a datalist JSON: its ``validation`` and ``test`` subjects as given; a pool it lacks is drawn from
    its ``training`` subjects (:func:`split_subjects`); the remaining training subjects are ``train`` and
    ``pretrain``."""
    given = {p: sorted(s.subject for s in subjects if s.pool == p) for p in ("validation", "test")}
    training = [s for s in subjects if s.pool == "training"]
    drawn = split_subjects(
        training,
        seed=seed,
        val_fraction=0.0 if given["validation"] else val_fraction,
        test_fraction=0.0 if given["test"] else test_fraction,
    )
    splits = {"train": drawn["train"], **{p: given[p] or drawn[p] for p in ("validation", "test")}}
    return {**splits, "pretrain": list(splits["train"])}


def source_splits(source: Source, split: str, seed: int, val_fraction: float, test_fraction: float) -> dict:
    """The subject-level splits of a scanned source (:func:`subject_splits`, or :func:`given_splits` for a datalist
    JSON); DataError naming the source for a published split of a source that is not in the ACDC layout, or for too
    few subjects."""
    if check_split(split) != "random" and source.kind != "acdc":
        raise DataError(
            source.path,
            f"split {split} lists ACDC subjects and needs the ACDC layout (patientXXX/ folders with Info.cfg); "
            f"this is a {source.describe()}: use --subject_split random",
        )
    try:
        if source.kind == "datalist":
            return given_splits(source.subjects, seed, val_fraction, test_fraction)
        return subject_splits(source.subjects, split, seed, val_fraction, test_fraction, source.path)
    except DataError:
        raise
    except ValueError as err:
        raise DataError(source.path, f"cannot split its subjects: {err}") from err

"""Published ACDC splits, so that numbers on real ACDC line up with the literature (see docs/acdc_splits.md).

- ``chaitanya2020``: Chaitanya et al., "Contrastive learning of global and local features for medical image
  segmentation with limited annotations", NeurIPS 2020; lists of their code (``experiment_init/data_cfg_acdc.py``
  of github.com/krishnabits001/domain_specific_cl, commit 38ea5ad). A fixed test set of 20 subjects, the 52
  subjects of their unlabelled pretraining pool (``tr52``), and fixed combinations of 1, 2 and 8 labelled
  subjects, each with its own two validation subjects. Their loaders read the ED frame (``frame01``) only.
- ``semi_70_10_20``: the 70 / 10 / 20 subject split of the semi-supervised ACDC literature (``data/ACDC/{train,
  val,test}.list`` of github.com/HiLab-git/SSL4MIS, commit 0119796), ED and ES frames.

Subjects are ACDC training subject numbers (``"007"`` is ``patient007``).
"""

from __future__ import annotations

from pix2rep_bundle.data.records import subject_name

SOURCES = {
    "chaitanya2020": "github.com/krishnabits001/domain_specific_cl experiment_init/data_cfg_acdc.py @ 38ea5ad3fbc5",
    "semi_70_10_20": "github.com/HiLab-git/SSL4MIS data/ACDC/{train,val,test}.list @ 0119796967386",
}

CHAITANYA2020_TEST = (
    "007",
    "008",
    "009",
    "010",
    "027",
    "028",
    "029",
    "030",
    "047",
    "048",
    "049",
    "050",
    "067",
    "068",
    "069",
    "070",
    "087",
    "088",
    "089",
    "090",
)
# their pretraining pool ("tr52"); 072 is also the validation subject of some combinations, as published
CHAITANYA2020_UNLABELED = (
    "001",
    "002",
    "003",
    "004",
    "005",
    "006",
    "017",
    "018",
    "019",
    "020",
    "012",
    "021",
    "022",
    "023",
    "024",
    "025",
    "026",
    "037",
    "038",
    "039",
    "040",
    "041",
    "042",
    "043",
    "044",
    "045",
    "046",
    "057",
    "058",
    "059",
    "060",
    "061",
    "062",
    "063",
    "064",
    "065",
    "066",
    "077",
    "078",
    "079",
    "080",
    "072",
    "081",
    "082",
    "083",
    "084",
    "085",
    "086",
    "097",
    "098",
    "099",
    "100",
)
# K -> combinations c1, c2, ...: (labelled subjects, validation subjects)
CHAITANYA2020_COMBINATIONS: dict[int, tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]] = {
    1: (
        (("002",), ("011", "071")),  # c1
        (("042",), ("031", "072")),  # c2
        (("095",), ("011", "071")),  # c3
        (("022",), ("011", "071")),  # c4
        (("062",), ("011", "071")),  # c5
    ),
    2: (
        (("042", "062"), ("031", "072")),  # c1
        (("002", "042"), ("011", "071")),  # c2
        (("042", "095"), ("031", "072")),  # c3
        (("002", "022"), ("011", "071")),  # c4
        (("002", "095"), ("011", "071")),  # c5
    ),
    8: (
        (("002", "022", "042", "062", "095", "003", "023", "043"), ("011", "071")),  # c1
        (("002", "022", "042", "062", "095", "063", "094", "043"), ("031", "072")),  # c2
        (("002", "022", "042", "062", "095", "003", "094", "023"), ("011", "071")),  # c3
    ),
}

SEMI_70_10_20_TRAIN = (
    "003",
    "004",
    "005",
    "006",
    "009",
    "010",
    "012",
    "014",
    "015",
    "016",
    "017",
    "018",
    "020",
    "021",
    "023",
    "025",
    "026",
    "027",
    "029",
    "031",
    "032",
    "034",
    "035",
    "036",
    "037",
    "038",
    "040",
    "041",
    "042",
    "043",
    "044",
    "046",
    "047",
    "048",
    "049",
    "050",
    "051",
    "053",
    "054",
    "055",
    "056",
    "057",
    "058",
    "060",
    "061",
    "062",
    "063",
    "067",
    "069",
    "070",
    "071",
    "072",
    "073",
    "074",
    "076",
    "077",
    "079",
    "086",
    "088",
    "089",
    "090",
    "091",
    "092",
    "094",
    "095",
    "096",
    "097",
    "098",
    "099",
    "100",
)
SEMI_70_10_20_VALIDATION = ("002", "019", "028", "030", "039", "045", "078", "082", "085", "087")
SEMI_70_10_20_TEST = (
    "001",
    "007",
    "008",
    "011",
    "013",
    "022",
    "024",
    "033",
    "052",
    "059",
    "064",
    "065",
    "066",
    "068",
    "075",
    "080",
    "081",
    "083",
    "084",
    "093",
)

SPLITS = ("random", "chaitanya2020", "semi_70_10_20")


def check_split(split: str) -> str:
    """``split`` if it is a known split, else a ValueError listing them."""
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}': choose one of {list(SPLITS)}")
    return split


def _names(numbers) -> list[str]:
    return sorted({subject_name(n) for n in numbers})


def named_pools(split: str) -> dict[str, list[str]]:
    """Subject names of a published split: ``pretrain`` (unlabelled pool), ``train`` (labelled pool),
    ``validation`` and ``test``."""
    check_split(split)
    if split == "chaitanya2020":
        combinations = [c for by_k in CHAITANYA2020_COMBINATIONS.values() for c in by_k]
        return {
            "pretrain": _names(CHAITANYA2020_UNLABELED),
            "train": _names(s for labelled, _ in combinations for s in labelled),
            "validation": _names(s for _, validation in combinations for s in validation),
            "test": _names(CHAITANYA2020_TEST),
        }
    if split == "semi_70_10_20":
        return {
            "pretrain": _names(SEMI_70_10_20_TRAIN),
            "train": _names(SEMI_70_10_20_TRAIN),
            "validation": _names(SEMI_70_10_20_VALIDATION),
            "test": _names(SEMI_70_10_20_TEST),
        }
    raise ValueError("the 'random' split is drawn from a seed, not named (pix2rep_bundle.data.splits.split_subjects)")


def labelled_phases(split: str) -> tuple[str, ...]:
    """Cardiac phases of the labelled, validation and test volumes: ED only for chaitanya2020 (as their loaders)."""
    return ("ED",) if split == "chaitanya2020" else ("ED", "ES")


def fixed_combination(split: str, num_subjects: int, label_seed: int) -> tuple[list[str], list[str]] | None:
    """(labelled, validation) subject names of combination ``c{label_seed + 1}`` for K = ``num_subjects``, for splits
    with published combinations (chaitanya2020); None for the others (K subjects are drawn from a seed).
    ValueError for a K or a seed without a published combination."""
    if split != "chaitanya2020":
        return None
    combinations = CHAITANYA2020_COMBINATIONS.get(int(num_subjects))
    if combinations is None:
        raise ValueError(
            f"split chaitanya2020 has published combinations for K in {sorted(CHAITANYA2020_COMBINATIONS)} "
            f"labelled subjects, got --num_labeled_subjects {num_subjects}"
        )
    if not 0 <= int(label_seed) < len(combinations):
        raise ValueError(
            f"split chaitanya2020 has {len(combinations)} combinations for K = {num_subjects}: "
            f"--label_seed 0 to {len(combinations) - 1} (c1 to c{len(combinations)}), got {label_seed}"
        )
    labelled, validation = combinations[int(label_seed)]
    return _names(labelled), _names(validation)

"""Show the labelled pool in the Pix2Rep feature space and the subjects chosen for labelling.

    python scripts/show_selection.py --dataset_dir /data/ACDC/training --subject_split semi_70_10_20 \
        --out docs/selection_pool_central.png --overwrite true
    ... --k 2 --seeds "[0,1,2,3,4]" --pretrained_ckpt runs/pretrain/pix2rep_backbone.pt

Every subject of the training pool becomes a point: its descriptor (shares of its body pixels' dense features over
a codebook of feature clusters, ``pix2rep_bundle.selection``) placed in 2D by classical multidimensional scaling of
the Hellinger distances, coloured by pathology group (read from the datalist for the figure only; the selection
reads no label or group). Marked: the K subjects ``--label_selection representative`` chooses (stars) and those of
the random stratified draws of ``--seeds`` (numbered circles), as ``configs/train.yaml`` would label them.
"""

from __future__ import annotations

from collections.abc import Sequence

import fire
import numpy as np
from matplotlib.figure import Figure

from pix2rep_bundle.io import atomic_path, refuse_existing_file
from pix2rep_bundle.settings import as_bool


def classical_mds(distances: np.ndarray, dims: int = 2) -> np.ndarray:
    """(N, dims) coordinates whose Euclidean distances best match ``distances`` (Torgerson's classical MDS)."""
    n = len(distances)
    centring = np.eye(n) - np.ones((n, n)) / n
    gram = -0.5 * centring @ (distances**2) @ centring
    values, vectors = np.linalg.eigh(gram)
    order = np.argsort(values)[::-1][:dims]
    return vectors[:, order] * np.sqrt(np.clip(values[order], 0, None))


def main(
    out: str = "runs/selection_pool.png",
    k: int = 1,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    pretrained_ckpt: str | None = None,
    overwrite: bool = False,
    **overrides,
) -> list[str]:
    """Draw the figure into ``out``; return the representative subjects.

    Args:
        out: the PNG to write.
        k: how many subjects are labelled.
        seeds: label seeds of the random draws to mark.
        pretrained_ckpt: the backbone (default: train.yaml's, the shipped one).
        overwrite: replace ``out`` when it exists (refused otherwise).
        overrides: train.yaml overrides that choose the data (``--dataset_dir``, ``--subject_split``, ...) or the
            descriptor (``--selection_centre_fraction``).
    """
    refuse_existing_file(out, as_bool(overwrite, "overwrite"))
    from pix2rep_bundle.bundle_configs import config_parser
    from pix2rep_bundle.data.datasets import choose_from_datalist, labeled_entries, load_datalist

    parser = config_parser(
        "train.yaml", {**overrides, **({"pretrained_ckpt": pretrained_ckpt} if pretrained_ckpt else {})}, strict=True
    )
    datalist, backbone = parser.get_parsed_content("prepared_datalist"), parser.get_parsed_content("pretrained_ckpt")
    centre_fraction = float(parser.get_parsed_content("selection_centre_fraction"))
    chosen, evidence = choose_from_datalist(datalist, backbone, int(k), centre_fraction=centre_fraction)
    subjects = list(evidence["subjects"])
    groups = {str(e["subject"]): str(e.get("group", "?")) for e in load_datalist(datalist, "labeled")}
    draws = {int(s): sorted({str(e["subject"]) for e in labeled_entries(datalist, int(k), int(s))}) for s in seeds}
    xy = classical_mds(np.asarray(evidence["distances"]))

    fig = Figure(figsize=(7, 6.3))  # no pyplot: no backend to choose
    ax = fig.add_subplot()
    for group in sorted(set(groups.values())):
        idx = [i for i, s in enumerate(subjects) if groups.get(s) == group]
        ax.scatter(xy[idx, 0], xy[idx, 1], s=25, label=group, alpha=0.8)
    for seed, drawn in draws.items():
        for subject in drawn:
            i = subjects.index(subject)
            ax.scatter(*xy[i], s=160, facecolors="none", edgecolors="black", linewidths=1.2)
            ax.annotate(str(seed), xy[i], textcoords="offset points", xytext=(6, 6), fontsize=8)
    for subject in chosen:
        i = subjects.index(subject)
        ax.scatter(*xy[i], s=260, marker="*", color="red", edgecolors="black", zorder=5)
        ax.annotate(subject, xy[i], textcoords="offset points", xytext=(8, -12), fontsize=8, color="red")
    region = "whole image" if centre_fraction >= 1 else f"central {centre_fraction:g} of height and width"
    ax.set_title(
        f"{len(subjects)} training subjects in the Pix2Rep feature space (classical MDS of Hellinger distances)\n"
        f"descriptor: {region}\n"
        f"red star: representative K = {k}; circles: random draws (label seed)",
        fontsize=9,
    )
    ax.legend(title="group", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    print(f"representative K = {k}: {', '.join(chosen)}; random draws: {draws}; figure: {out}", flush=True)
    return chosen


if __name__ == "__main__":
    fire.Fire(main, serialize=lambda chosen: None)

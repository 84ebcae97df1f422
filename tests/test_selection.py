"""Cold-start subject selection (pix2rep_bundle/selection.py): the k-medoids choice, the distances, and the whole
choice on a tiny phantom from a backbone file, reading images only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, find_in_chain, load_script, parsed_config, tiny_settings, train_settings
from monai.bundle import ConfigParser

from pix2rep_bundle.data.datasets import choose_from_datalist
from pix2rep_bundle.selection import central_square, hellinger_distances, k_medoids, kmeans, subject_pixels


def euclidean(points: np.ndarray) -> np.ndarray:
    return np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))


def test_one_medoid_is_the_most_central_point_and_k_medoids_cover_the_clusters():
    line = np.array([[0.0], [1.0], [2.0], [3.0], [10.0]])
    assert k_medoids(euclidean(line), 1) == [2]  # least total distance to the others
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10]])
    points = np.concatenate([c + rng.normal(0, 0.5, (6, 2)) for c in centres])
    chosen = k_medoids(euclidean(points), 3)
    assert sorted(i // 6 for i in chosen) == [0, 1, 2], "one medoid per cluster"
    more = k_medoids(euclidean(points), 1, fixed=[chosen[0]])
    assert more[0] // 6 != chosen[0] // 6, "the next subject covers another cluster than the labelled one"
    with pytest.raises(ValueError, match="cannot choose 19 of 18"):
        k_medoids(euclidean(points), 19)


def test_hellinger_distances_are_zero_on_equal_shares_and_one_on_disjoint_ones():
    shares = np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    distances = hellinger_distances(shares)
    assert distances[0, 1] == pytest.approx(0.0, abs=1e-7)
    assert distances[0, 2] == pytest.approx(1.0)
    assert np.allclose(distances, distances.T)


def test_kmeans_finds_separated_clusters():
    rng = np.random.default_rng(1)
    points = np.concatenate([rng.normal(c, 0.1, (50, 2)) for c in (-5.0, 5.0)])
    centres = np.sort(kmeans(points, 2, seed=0)[:, 0])
    assert centres == pytest.approx([-5.0, 5.0], abs=0.1)


def test_central_square_keeps_the_centre_of_the_image():
    mask = central_square((8, 6), 0.5)
    assert mask.sum() == 4 * 3
    assert mask[2:6, 1:4].all() and not mask[:2].any() and not mask[6:].any()
    assert central_square((8, 6), 1.0).all()
    assert central_square((5, 5), 0.01).sum() == 1 and central_square((5, 5), 0.01)[2, 2]


class PositionFeatures(torch.nn.Module):
    """A stand-in backbone whose features at pixel (i, j) are (1, i, j): the pixels read are known after the
    per-pixel L2 normalisation (i = f1 / f0, j = f2 / f0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        rows, cols = torch.meshgrid(torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype), indexing="ij")
        return torch.stack([torch.ones_like(rows), rows, cols])[None].expand(x.shape[0], -1, -1, -1)


def test_the_descriptor_reads_only_the_central_pixels_on_request():
    volume = torch.ones(16, 16, 3)  # every pixel is body
    whole = subject_pixels(PositionFeatures(), ["v"], loader=lambda _: volume)
    centre = subject_pixels(PositionFeatures(), ["v"], loader=lambda _: volume, centre_fraction=0.5)
    assert len(whole) == 16 * 16 * 3 and len(centre) == 8 * 8 * 3
    rows, cols = np.rint(centre[:, 1] / centre[:, 0]), np.rint(centre[:, 2] / centre[:, 0])
    assert rows.min() == 4 and rows.max() == 11 and cols.min() == 4 and cols.max() == 11
    with pytest.raises(ValueError, match=r"centre_fraction must be in \(0, 1\], got 0"):
        subject_pixels(PositionFeatures(), ["v"], loader=lambda _: volume, centre_fraction=0)


def test_choice_from_a_datalist_is_deterministic_distinct_and_reads_no_label(tmp_path, backbone, monkeypatch):
    parser = parsed_config("train.yaml", tiny_settings(tmp_path))
    datalist = parser.get_parsed_content("prepared_datalist")
    pool = {e["subject"] for e in json.loads(Path(datalist).read_text())["labeled"]}

    import pix2rep_bundle.data.preprocessing as preprocessing

    reader = preprocessing.HeaderSpacingNibabelReader.read

    def no_labels(self, data, **kwargs):
        assert "_gt.nii" not in str(data), f"a label was read: {data}"
        return reader(self, data, **kwargs)

    monkeypatch.setattr(preprocessing.HeaderSpacingNibabelReader, "read", no_labels)
    chosen, evidence = choose_from_datalist(datalist, str(backbone), 2)
    assert len(set(chosen)) == 2 and set(chosen) <= pool
    assert choose_from_datalist(datalist, str(backbone), 2)[0] == chosen
    assert evidence["distances"].shape == (len(pool), len(pool))
    following, _ = choose_from_datalist(datalist, str(backbone), 1, labelled=chosen[:1])
    assert following[0] != chosen[0]


def test_train_config_labels_the_representative_subjects_on_request(tmp_path, backbone):
    def subjects(selection: str, centre_fraction: float = 1.0) -> tuple[list[str], ConfigParser]:
        parser = parsed_config(
            "train.yaml",
            {
                **tiny_settings(tmp_path),
                "pretrained_ckpt": str(backbone),
                "num_labeled_subjects": 2,
                "label_selection": selection,
                "selection_centre_fraction": centre_fraction,
            },
        )
        return sorted({e["subject"] for e in parser.get_parsed_content("train#dataset#data")}), parser

    representative, parser = subjects("representative")
    expected, _ = choose_from_datalist(parser.get_parsed_content("prepared_datalist"), str(backbone), 2)
    assert representative == sorted(expected)
    central, _ = subjects("representative", centre_fraction=0.25)
    expected, _ = choose_from_datalist(
        parser.get_parsed_content("prepared_datalist"), str(backbone), 2, centre_fraction=0.25
    )
    assert central == sorted(expected)
    with pytest.raises(Exception) as outside:
        subjects("representative", centre_fraction=1.5)
    assert find_in_chain(outside.value, ValueError, r"centre_fraction must be in \(0, 1\], got 1.5")
    assert len(subjects("random")[0]) == 2
    with pytest.raises(Exception) as unknown:
        subjects("best")
    assert find_in_chain(unknown.value, ValueError, r"unknown label selection 'best': choose one of")


def test_the_next_study_for_monai_label_completes_the_labelled_ones(tmp_path):
    """propose_next_study (MONAI Label's strategy) on raw phantom volumes (prepared on the fly) with the shipped
    backbone: deterministic, never a labelled study, nothing to propose once every study is labelled."""
    from pix2rep_bundle.data.phantom import write_phantom
    from pix2rep_bundle.selection import propose_next_study

    write_phantom(tmp_path / "phantom", num_subjects=3, seed=5)
    studies = {p.name[: -len(".nii.gz")]: str(p) for p in sorted((tmp_path / "phantom").glob("*/*_frame??.nii.gz"))}
    assert len(studies) == 6
    first = propose_next_study(REPO, studies, {})
    assert first in studies and propose_next_study(REPO, studies, {}) == first
    rest = {k: v for k, v in studies.items() if k != first}
    second = propose_next_study(REPO, rest, {first: studies[first]})
    assert second in rest
    assert propose_next_study(REPO, {}, studies) is None


def test_selection_figure_marks_the_chosen_subjects_on_the_pool(tmp_path, backbone):

    figure = tmp_path / "pool.png"
    chosen = load_script("show_selection").main(
        out=str(figure), k=2, seeds=[0, 1], pretrained_ckpt=str(backbone), **train_settings(tmp_path)
    )
    assert len(chosen) == 2 and len(set(chosen)) == 2
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_classical_mds_recovers_planar_distances():

    points = np.random.default_rng(0).normal(size=(12, 2))
    xy = load_script("show_selection").classical_mds(euclidean(points))
    np.testing.assert_allclose(euclidean(xy), euclidean(points), atol=1e-8)

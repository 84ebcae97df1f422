"""Adversarial NIfTI files and Info.cfg files: every reader refuses what it cannot read truly, naming the file and
the problem, before any large allocation; or reads it right (spacing in metres or microns).

Readers tried: ``load_nifti`` (data preparation), the MONAI loading chain ``volume_preprocessing`` (inference,
raw-volume training, selection) as ``configs/inference.yaml`` builds it, ``volume_loader`` (scoring) and
``read_info_cfg`` / ``scan_acdc`` (Info.cfg).
"""

from __future__ import annotations

import gzip
import time
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import find_in_chain, parsed_config, tiny_settings
from test_acdc import write_dataset

from pix2rep_bundle.data import nifti_checks
from pix2rep_bundle.data.acdc import scan_acdc
from pix2rep_bundle.data.info_cfg import read_info_cfg
from pix2rep_bundle.data.nifti_checks import check_resampled_size, verify_compressed
from pix2rep_bundle.data.preparation import _meta_tensor, prepare_dataset
from pix2rep_bundle.data.preprocessing import volume_loader, volume_preprocessing
from pix2rep_bundle.data.volume_checks import load_nifti
from pix2rep_bundle.errors import DataError

SHAPE, ZOOMS = (48, 40, 4), (1.5, 1.5, 8.0)


def _image(array: np.ndarray, zooms=ZOOMS, unit: str = "mm", per_mm: float = 1.0) -> nib.Nifti1Image:
    """NIfTI image with affine diag(zooms) + an origin, both given in mm and written in ``unit`` (``per_mm`` units
    per mm), and matching pixdim."""
    zooms = tuple(z * per_mm for z in zooms)
    affine = np.diag([*zooms[:3], 1.0])
    affine[:3, 3] = np.array((-20.0, 10.0, 5.0)) * per_mm
    img = nib.Nifti1Image(array, affine)
    img.header.set_zooms(tuple(zooms[: array.ndim]) + (1.0,) * (array.ndim - 3))
    img.set_sform(affine, code=2)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units(unit, "sec")
    return img


def _volume(seed: int = 0) -> np.ndarray:
    """A textured int16 volume (a bright disk on noise), not constant in any slice."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    disk = (np.hypot(x - 24, y - 20) < 10)[..., None] * 800
    return (disk + rng.normal(300, 60, SHAPE)).astype(np.int16)


def _save(path: Path, img: nib.Nifti1Image) -> Path:
    nib.save(img, str(path))
    return path


def _raw(header: nib.Nifti1Header, data: bytes, vox_offset: int = 352) -> bytes:
    """The bytes of a single-file NIfTI with ``header`` exactly as set (``nib.save`` would repair some fields)."""
    header = header.copy()
    header["vox_offset"] = vox_offset
    return header.binaryblock + b"\0" * 4 + data


def _loaders(path: Path) -> dict:
    """Every reader of a 3D volume file, each a call that loads ``path``."""
    inference = parsed_config("inference.yaml", tiny_settings(path.parent)).get_parsed_content("preprocessing")
    return {
        "load_nifti (preparation)": lambda: load_nifti(path),
        "volume_preprocessing (inference.yaml)": lambda: inference({"image": str(path)}),
        "volume_loader (scoring, selection)": lambda: volume_loader()(str(path)),
    }


def _assert_refused(path: Path, problem: str) -> None:
    """Every reader raises a DataError naming ``path`` and matching ``problem``."""
    for name, load in _loaders(path).items():
        with pytest.raises(Exception) as info:
            load()
        assert find_in_chain(info.value, DataError, rf"{path.name}.*{problem}"), f"{name}: {info.value!r}"


# ---------------------------------------------------------------------------------------------- 5: gzip integrity


def _flip_decodable_byte(path: Path) -> None:
    """Flip one byte of the compressed stream such that it still inflates (to different voxels): only the CRC can
    tell. The header (first bytes of the data) is kept intact."""
    raw = path.read_bytes()
    start = 10  # gzip member header without name/extra fields (nibabel writes none)
    body, original = raw[start:-8], zlib.decompress(raw[start:-8], -15)
    for pos in range(len(body) // 2, len(body)):
        flipped = bytearray(body)
        flipped[pos] ^= 0x10
        try:
            inflater = zlib.decompressobj(-15)
            out = inflater.decompress(bytes(flipped)) + inflater.flush()
        except zlib.error:
            continue
        if inflater.eof and len(out) == len(original) and out[:400] == original[:400] and out != original:
            path.write_bytes(raw[:start] + bytes(flipped) + raw[-8:])
            return
    raise AssertionError("no decodable byte flip found")


def _corrupt_trailer(path: Path, offset: int) -> None:
    """Change one byte of the gzip trailer: offset -8 is the CRC32, -4 the uncompressed length."""
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    "damage",
    [_flip_decodable_byte, lambda p: _corrupt_trailer(p, -8), lambda p: _corrupt_trailer(p, -4)],
    ids=["flipped byte inside the stream", "corrupt CRC", "corrupt length"],
)
def test_a_corrupt_gzip_stream_is_refused_by_every_reader(tmp_path, damage):
    path = _save(tmp_path / "scan.nii.gz", _image(_volume()))
    damage(path)
    assert nib.load(str(path)).shape == SHAPE  # nibabel alone still opens it
    _assert_refused(path, "truncated or corrupt")


def test_the_byte_flip_changes_voxels_that_nibabel_reads_without_error(tmp_path):
    path = _save(tmp_path / "scan.nii.gz", _image(_volume()))
    before = np.asarray(nib.load(str(path)).dataobj)
    _flip_decodable_byte(path)
    after = np.asarray(nib.load(str(path)).dataobj)  # what the bundle would have used
    assert np.any(before != after)


@pytest.mark.parametrize("which", ["image", "label"])
def test_preparation_refuses_a_corrupt_gzip_image_or_label(tmp_path, which):
    source = write_dataset(tmp_path / "acdc", num_subjects=5)
    suffix = "_gt" if which == "label" else ""
    path = source / "patient002" / f"patient002_frame01{suffix}.nii.gz"
    _corrupt_trailer(path, -8)
    with pytest.raises(DataError, match=rf"{path.name}.*truncated or corrupt"):
        prepare_dataset(source, tmp_path / "out", spacing=(4.0, 4.0), image_size=(16, 16))
    assert not (tmp_path / "out").exists()


def test_a_gzip_stream_longer_than_its_header_declares_is_refused(tmp_path):
    img = _image(np.zeros((8, 8, 2), np.int16))
    raw = _raw(img.header, np.zeros((8, 8, 2), np.int16).tobytes() + b"\0" * (3 << 20))
    path = tmp_path / "bomb.nii.gz"
    path.write_bytes(gzip.compress(raw))
    _assert_refused(path, "unpacks to more than")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_a_file_shorter_than_its_header_declares_is_refused_before_its_data_is_read(tmp_path, suffix):
    img = _image(np.zeros((8, 8, 2), np.int16))
    raw = _raw(img.header, np.zeros((8, 8, 1), np.int16).tobytes())  # one slice of two
    path = tmp_path / f"short{suffix}"
    path.write_bytes(gzip.compress(raw) if suffix.endswith(".gz") else raw)
    _assert_refused(path, "truncated or corrupt: 480 bytes of header and data, its header declares 608")


def test_data_that_would_start_inside_the_header_is_refused(tmp_path):
    img = _image(np.zeros((8, 8, 2), np.int16))
    path = tmp_path / "offset.nii.gz"
    path.write_bytes(gzip.compress(_raw(img.header, np.zeros((8, 8, 2), np.int16).tobytes(), vox_offset=0)))
    _assert_refused(path, "vox_offset 0 lies inside the header")


def test_verify_compressed_accepts_sound_streams_and_skips_plain_files(tmp_path):
    gz = _save(tmp_path / "scan.nii.gz", _image(_volume()))
    plain = _save(tmp_path / "scan.nii", _image(_volume()))
    assert verify_compressed(gz) == len(gzip.decompress(gz.read_bytes()))
    assert verify_compressed(plain) is None
    np.testing.assert_array_equal(load_nifti(gz)[0], load_nifti(plain)[0])


# ---------------------------------------------------------------------------------------------- 10: units, dtypes


@pytest.mark.parametrize("unit, factor", [("meter", 1e-3), ("micron", 1e3), ("unknown", 1.0)])
def test_spacing_follows_the_header_unit(tmp_path, unit, factor):
    reference = _save(tmp_path / "mm.nii.gz", _image(_volume()))
    other = _save(tmp_path / f"{unit}.nii.gz", _image(_volume(), unit=unit, per_mm=factor))
    data, affine = load_nifti(other)
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), ZOOMS, rtol=1e-5)
    np.testing.assert_allclose(affine, load_nifti(reference)[1], rtol=1e-5, atol=1e-6)
    chain = volume_preprocessing(["image"], spacing=(3.0, 3.0), image_size=(32, 32))
    expected, got = chain({"image": str(reference)})["image"], chain({"image": str(other)})["image"]
    assert got.shape == expected.shape == (1, 32, 32, SHAPE[2])
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5)
    assert float(got.max()) == pytest.approx(1.0)  # not an all-background volume
    np.testing.assert_allclose(volume_loader()(str(other)).affine.numpy(), affine, rtol=1e-5, atol=1e-6)


def test_an_undefined_unit_code_is_refused(tmp_path):
    img = _image(_volume())
    img.header["xyzt_units"] = 5
    path = _save(tmp_path / "unit.nii.gz", img)
    _assert_refused(path, "undefined spatial unit code 5")


@pytest.mark.parametrize(
    "array",
    [(np.ones(SHAPE) + 1j).astype(np.complex64), np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])],
    ids=["complex", "RGB"],
)
def test_non_real_voxels_are_refused(tmp_path, array):
    path = _save(tmp_path / "odd.nii.gz", _image(array))
    _assert_refused(path, "not a real number")


# ---------------------------------------------------------------------------------------------- 11: Info.cfg


INFO = "ED: 1\nES: 12\nGroup: DCM\nHeight: 184.0\nNbFrame: 30\nWeight: 95.0\n"
BAD_INFO = {
    "fractional ES": (INFO.replace("ES: 12", "ES: 12.9"), "'ES'.*'12.9'"),
    "text ED": (INFO.replace("ED: 1", "ED: one"), "'ED'.*'one'"),
    "negative ES": (INFO.replace("ES: 12", "ES: -3"), "'ES'.*'-3'"),
    "zero NbFrame": (INFO.replace("NbFrame: 30", "NbFrame: 0"), "'NbFrame'.*'0'"),
    "empty ED": (INFO.replace("ED: 1", "ED:"), "'ED'.*''"),
    "ES given twice": (INFO + "ES: 13\n", "'ES'.*twice.*'12'.*'13'"),
    "ES beyond NbFrame": (INFO.replace("ES: 12", "ES: 31"), "'ES'.*'31'.*1..30"),
    "ED beyond NbFrame": (INFO.replace("NbFrame: 30", "NbFrame: 11").replace("ED: 1", "ED: 12"), "'ED'.*'12'.*1..11"),
    "text Height": (INFO.replace("184.0", "tall"), "'Height'.*'tall'"),
    "NaN Weight": (INFO.replace("95.0", "nan"), "'Weight'.*'nan'"),
    "negative Weight": (INFO.replace("95.0", "-95"), "'Weight'.*'-95'"),
    "line without a colon": (INFO + "ES 13\n", "line 7.*'ES 13'"),
}


@pytest.mark.parametrize("row", sorted(BAD_INFO))
def test_an_info_cfg_field_that_cannot_be_read_truly_is_refused(tmp_path, row):
    text, problem = BAD_INFO[row]
    path = tmp_path / "Info.cfg"
    path.write_text(text)
    with pytest.raises(DataError, match=rf"Info.cfg: .*{problem}"):
        read_info_cfg(path)


def test_a_sound_info_cfg_reads_as_written(tmp_path):
    path = tmp_path / "Info.cfg"
    path.write_text(INFO.replace("ES: 12", "ES: 12.0") + "\n")
    info = read_info_cfg(path, required=("ED", "ES"))
    assert info == {"ED": "1", "ES": "12.0", "Group": "DCM", "Height": "184.0", "NbFrame": "30", "Weight": "95.0"}


def test_scanning_a_dataset_refuses_a_fractional_frame(tmp_path):
    source = write_dataset(tmp_path / "acdc", num_subjects=2)
    info = source / "patient002" / "Info.cfg"
    info.write_text(info.read_text().replace("ES: 4", "ES: 4.9"))
    with pytest.raises(DataError, match=r"patient002.Info.cfg.*'ES'.*'4.9'"):
        scan_acdc(source)


# ---------------------------------------------------------------------------------------------- 12: geometry


def _zero_sform(img: nib.Nifti1Image) -> None:
    img.set_sform(np.zeros((4, 4)), code=2)


def _nan_affine(img: nib.Nifti1Image) -> None:
    affine = img.get_sform()
    affine[0, 3] = np.nan
    img.set_sform(affine, code=2)


def _parallel_axes(img: nib.Nifti1Image) -> None:
    affine = img.get_sform()
    affine[:3, 1] = affine[:3, 0]
    img.set_sform(affine, code=2)


def _pixdim(axis: int, value: float):
    def damage(img: nib.Nifti1Image) -> None:
        img.header["pixdim"][axis] = value

    return damage


def _code(field: str, value: int):
    def damage(img: nib.Nifti1Image) -> None:
        img.header[field] = value

    return damage


BAD_GEOMETRY = {
    "zero sform": (_zero_sform, "affine column 0 is zero"),
    "NaN affine": (_nan_affine, "affine holds NaN"),
    "parallel axes": (_parallel_axes, "affine is not invertible"),
    "zero slice spacing": (_pixdim(3, 0.0), r"voxel size 0 in pixdim\[3\]"),
    "NaN pixel spacing": (_pixdim(2, np.nan), r"voxel size nan in pixdim\[2\]"),
    "infinite pixel spacing": (_pixdim(1, np.inf), r"voxel size inf in pixdim\[1\]"),
    "negative pixel spacing": (_pixdim(1, -1.5), r"voxel size -1.5 in pixdim\[1\]"),
    "undefined sform code": (_code("sform_code", 9), "sform_code 9 is not a NIfTI code"),
}


def _write_unchecked(img: nib.Nifti1Image, path: Path) -> None:
    """Write ``img`` as .nii.gz with its header exactly as set."""
    data = np.asarray(img.dataobj).astype(img.header.get_data_dtype())
    path.write_bytes(gzip.compress(_raw(img.header, data.tobytes(order="F"))))


@pytest.mark.parametrize("row", sorted(BAD_GEOMETRY))
def test_unusable_geometry_is_refused_by_every_reader(tmp_path, row):
    damage, problem = BAD_GEOMETRY[row]
    img = _image(_volume())
    damage(img)
    path = tmp_path / "geometry.nii.gz"
    _write_unchecked(img, path)
    _assert_refused(path, problem)


def test_voxel_sizes_must_be_positive_and_finite():
    nifti_checks.check_voxel_sizes((1.5, 1.5, 8.0), "ok.nii.gz")
    for zooms, problem in (((-1.5, 1.5, 8.0), r"-1.5 in pixdim\[1\]"), ((1.5, 1.5, 0.0), r"0 in pixdim\[3\]")):
        with pytest.raises(DataError, match=rf"bad.nii.gz: voxel size {problem}"):
            nifti_checks.check_voxel_sizes(zooms, "bad.nii.gz")


# ---------------------------------------------------------------------------------------------- 13: size guards


def _header_only_gzip(path: Path, shape: tuple[int, ...], dtype=np.int16) -> Path:
    """A small gzip whose header declares ``shape`` but which holds only 1 MB of voxels."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_zooms((1.5, 1.5, 8.0))
    header.set_sform(np.diag([1.5, 1.5, 8.0, 1.0]), code=2)
    path.write_bytes(gzip.compress(_raw(header, b"\0" * (1 << 20))))
    return path


def test_a_huge_declared_volume_is_refused_before_its_data_is_read(tmp_path):
    path = _header_only_gzip(tmp_path / "huge.nii.gz", (2048, 2048, 256))
    start = time.perf_counter()
    _assert_refused(path, r"\(2048, 2048, 256\).*above the limit of 268435456 \(MAX_DECLARED_VOXELS\)")
    assert time.perf_counter() - start < 20


def test_a_spacing_typo_is_refused_before_resampling(tmp_path):
    path = _save(tmp_path / "typo.nii.gz", _image(np.ones((128, 96, 2), np.int16), zooms=(40.0, 40.0, 8.0)))
    chain = volume_preprocessing(["image"], spacing=(2.0, 2.0), image_size=(32, 32))
    with pytest.raises(Exception) as info:
        chain({"image": str(path)})
    pattern = r"typo.nii.gz.*128 x 96 voxels of 40 x 40 mm.*2560 x 1920.*limit of 2048"
    assert find_in_chain(info.value, DataError, pattern), repr(info.value)
    # preparation runs the same chain on the loaded volume
    data, affine = load_nifti(path)
    chain = volume_preprocessing(["image"], spacing=(2.0, 2.0), image_size=(32, 32), load=False)
    with pytest.raises(Exception) as info:
        chain({"image": _meta_tensor(data, affine, path)})
    assert find_in_chain(info.value, DataError, pattern), repr(info.value)


def test_resampled_size_limits_are_checked_per_side_and_in_all():
    check_resampled_size((256, 256, 10), (1.5, 1.5), (1.5, 1.5), "ok.nii.gz")
    with pytest.raises(DataError, match=r"side.nii.gz.*above the limit of 2048 per side"):
        check_resampled_size((256, 256, 10), (40.0, 1.5), (2.0, 2.0), "side.nii.gz")
    side = nifti_checks.MAX_RESAMPLED_SIDE
    with pytest.raises(DataError, match=r"all.nii.gz.*MAX_RESAMPLED_VOXELS"):
        check_resampled_size((side, side, 256), (1.0, 1.0), (1.0, 1.0), "all.nii.gz")


# ---------------------------------------------------------------------------------------------- end to end


def test_inference_stops_on_a_corrupt_gzip_and_segments_a_volume_in_metres_as_in_mm(tmp_path):
    from test_inference import LabelFromIntensity, infer, labelled_volume

    labels = labelled_volume(SHAPE)
    (tmp_path / "in").mkdir()
    mm = _save(tmp_path / "in" / "mm.nii.gz", _image((labels / 3).astype(np.float32)))
    metres = _save(
        tmp_path / "in" / "metres.nii.gz", _image((labels / 3).astype(np.float32), unit="meter", per_mm=1e-3)
    )
    corrupt = _save(tmp_path / "in" / "corrupt.nii.gz", _image((labels / 3).astype(np.float32)))
    _corrupt_trailer(corrupt, -8)
    with pytest.raises(Exception) as info:
        infer(
            {"inputs": [str(corrupt)], "output_dir": str(tmp_path / "bad"), "ckpt_path": "unused"}, LabelFromIntensity()
        )
    assert find_in_chain(info.value, DataError, r"corrupt.nii.gz.*truncated or corrupt"), repr(info.value)
    assert not list((tmp_path / "bad").glob("*.nii.gz")), "a segmentation was written"
    infer(
        {"inputs": [str(mm), str(metres)], "output_dir": str(tmp_path / "out"), "ckpt_path": "unused"},
        LabelFromIntensity(),
    )
    seg_mm, seg_m = (nib.load(str(tmp_path / "out" / f"{n}_seg.nii.gz")) for n in ("mm", "metres"))
    assert np.count_nonzero(np.asarray(seg_mm.dataobj)) > 0.5 * np.count_nonzero(labels)
    np.testing.assert_array_equal(np.asarray(seg_m.dataobj), np.asarray(seg_mm.dataobj))
    assert seg_m.header.get_xyzt_units()[0] == "meter"  # the output keeps its input's header

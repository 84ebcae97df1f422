"""Synthetic short-axis cardiac cine MR phantom, written in the ACDC layout.

Each subject is drawn from ``np.random.default_rng([seed, subject_id])`` alone, so subject 7 is the same
whether 10 or 100 subjects are generated. The anatomy is a star-shaped left ventricle (bright blood pool in a
darker myocardial ring, papillary muscles), a right-ventricular crescent on the septal side with a thin wall,
patchy pericardial fat, and a torso around it (subcutaneous fat, chest-wall muscle, lungs, liver, spine,
aorta, random blobs and smooth textures). Base-to-apex the cavities shrink on an ellipsoidal profile and the
right ventricle ends before the apex; at end-systole the cavities shrink by the group's ejection fraction
while the myocardial area of every slice is conserved (so the wall thickens). The pathology group (NOR,
MINF, DCM, HCM, RV) shapes the sizes, wall thickness and ejection fractions.

Labels (0 background, 1 RV, 2 MYO, 3 LV) are thresholded from the same signed distances that render the
image with a one-voxel partial-volume ramp, so label and image agree exactly. The acquisition adds an
in-plane blur, a smooth multiplicative bias field, Rician noise and a per-subject integer intensity scale.
Everything is vectorised numpy (no scipy): smooth random fields are Gaussian radial-basis interpolations of
coarse white noise, applied as small matrix products.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pix2rep_bundle.errors import DataError
from pix2rep_bundle.io import atomic_path, write_json_atomic
from pix2rep_bundle.outputs import check_replaceable, replaced_directory

GROUPS: tuple[str, ...] = ("NOR", "MINF", "DCM", "HCM", "RV")
LABELS: dict[str, int] = {"background": 0, "RV": 1, "MYO": 2, "LV": 3}
MARKER = "phantom.json"
PHANTOM_VERSION = 1  # bump when the generator's output changes: ensure_phantom then regenerates
N_ANGLES = 720  # angular resolution of the boundary look-up tables
_F32 = np.float32

if TYPE_CHECKING:
    import nibabel as nib


# --------------------------------------------------------------------------------------------- data types


@dataclass
class PhantomSubject:
    """One generated subject: ED and ES volumes (and optionally the whole cycle) with labels."""

    subject_id: int
    group: str
    spacing: tuple[float, float, float]
    ed_frame: int
    es_frame: int
    num_frames: int
    height: float
    weight: float
    images: dict[int, np.ndarray] = field(default_factory=dict)
    labels: dict[int, np.ndarray] = field(default_factory=dict)
    cine: np.ndarray | None = None
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def name(self) -> str:
        """ACDC folder name, e.g. ``patient001``."""
        return subject_name(self.subject_id)


@dataclass(frozen=True)
class _Heart:
    """End-diastolic heart geometry in the heart frame (mm); the septum points to angle pi."""

    r_endo: float  # basal LV cavity radius
    wall: float  # basal wall thickness
    len_epi: float  # base-to-apex length of the epicardium
    apex_wall: float  # apical cap thickness (len_epi - endocardial length)
    taper: float  # exponent of the ellipsoidal base-to-apex profile
    endo_shape: np.ndarray  # (N_ANGLES,) relative endocardial radius modulation
    epi_shape: np.ndarray  # (N_ANGLES,) relative epicardial radius modulation
    wall_shape: np.ndarray  # (N_ANGLES, Z) relative wall thickness per slice
    contraction: np.ndarray  # (N_ANGLES, Z) in-plane radius factor at end-systole
    long_shortening: float  # endocardial length factor at end-systole
    rv_depth: float  # basal RV crescent depth
    rv_span: float  # half angular span of the crescent (rad)
    rv_skew: float  # angular offset of the crescent centre from the septum (rad)
    rv_len: float  # RV length from the base
    rv_wall: float
    rv_contraction: float  # RV depth factor at end-systole
    rv_shape: np.ndarray  # (N_ANGLES,) relative depth modulation
    fat: np.ndarray  # (N_ANGLES,) pericardial fat thickness (mm)
    papillary_angles: tuple[float, float]
    papillary_radius: float
    apex_drift: tuple[float, float]  # LV centre displacement at the apex (mm)


@dataclass(frozen=True)
class _Acquisition:
    """Voxel grid and slice positions."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    heights: np.ndarray  # (Z,) distance of every slice below the base plane (mm)
    origin: tuple[float, float, float]


@dataclass(frozen=True)
class _Scene:
    """Placement of the anatomy in the field of view and tissue intensities (blood = 1)."""

    body_centre: tuple[float, float]  # mm from the centre of the field of view
    body_angle: float
    heart_offset: tuple[float, float]  # heart centre relative to the body centre, body frame (mm)
    heart_angle: float  # heart frame relative to the body frame
    tissue: dict[str, float]
    noise: float  # Rician sigma relative to blood
    scale: float  # final intensity scale
    blur: float  # in-plane Gaussian blur sigma (voxels)


# --------------------------------------------------------------------------------------------- small helpers


def subject_name(subject_id: int) -> str:
    """ACDC folder name of a subject number: 1 -> ``patient001``."""
    return f"patient{int(subject_id):03d}"


def group_of(subject_id: int) -> str:
    """Pathology group of a subject: the ids cycle through GROUPS, so every 5 consecutive ids hold each once."""
    return GROUPS[(int(subject_id) - 1) % len(GROUPS)]


def _angles() -> np.ndarray:
    """Angles of the look-up table bins, from -pi (inclusive) to pi."""
    return (-np.pi + 2 * np.pi * np.arange(N_ANGLES) / N_ANGLES).astype(_F32)


def _wrap(a: np.ndarray | float) -> np.ndarray | float:
    """Wrap angles to [-pi, pi)."""
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


def _harmonics(rng: np.random.Generator, amp: float, kmin: int = 2, kmax: int = 6) -> np.ndarray:
    """Random smooth periodic function of angle: sum of cosines with amplitudes ~ amp / k."""
    ang = _angles()
    out = np.zeros(N_ANGLES, _F32)
    for k in range(kmin, kmax + 1):
        out += _F32(amp / k * rng.uniform(0.3, 1.0)) * np.cos(k * ang + rng.uniform(0, 2 * np.pi))
    return out


def _bump(centre: float, width: float) -> np.ndarray:
    """Periodic Gaussian bump over the angle table."""
    return np.exp(-0.5 * (_wrap(_angles() - centre) / width) ** 2).astype(_F32)


def _profile(h: np.ndarray, length: float, taper: float) -> np.ndarray:
    """Ellipsoid-like radius factor at depth h below the base: 1 at the base, 0 at ``length`` and beyond."""
    t = np.clip(np.asarray(h, dtype=np.float64) / max(length, 1e-6), 0.0, 1.0)
    return np.sqrt(np.clip(1.0 - t**taper, 0.0, 1.0))


def _alpha(d: np.ndarray, width: float) -> np.ndarray:
    """Partial-volume fraction of a region given its signed distance d (mm, negative inside): 0.5 on the edge."""
    return np.clip(0.5 - d / _F32(width), 0.0, 1.0)


def _paint(img: np.ndarray, alpha: np.ndarray, value: np.ndarray | float) -> None:
    """Blend ``value`` into ``img`` in place with opacity ``alpha``."""
    img += alpha * (value - img)


def _upsample_axis(coarse: np.ndarray, n: int, cell: float, axis: int) -> np.ndarray:
    """Cubic B-spline interpolation of ``coarse`` to ``n`` points along ``axis`` (one node every ``cell``
    points), rescaled so that unit-variance white noise stays unit-variance. Elementwise only (no BLAS)."""
    p = 1.0 + np.arange(n) / cell
    i = np.floor(p).astype(np.intp)
    t = p - i
    w = np.stack([(1 - t) ** 3, 3 * t**3 - 6 * t**2 + 4, -3 * t**3 + 3 * t**2 + 3 * t + 1, t**3]) / 6.0
    w = (w / np.sqrt((w**2).sum(0))).astype(_F32)
    shape = [1] * coarse.ndim
    shape[axis] = n
    out = None
    for k in range(4):
        term = np.take(coarse, i - 1 + k, axis=axis) * w[k].reshape(shape)
        out = term if out is None else out + term
    return out


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], cell_px: float,
                  cell_z: float = 1.0) -> np.ndarray:
    """Unit-variance smooth random field of ``shape``: correlation length ~ cell_px voxels in plane and
    ~ cell_z slices through plane (cell_z <= 1: independent slices)."""
    nx, ny, nz = shape
    cell_px = max(float(cell_px), 1.0)
    cx, cy = (int((n - 1) / cell_px) + 4 for n in (nx, ny))
    if cell_z > 1:
        cz = int((nz - 1) / cell_z) + 4
        field = _upsample_axis(rng.standard_normal((cx, cy, cz), dtype=_F32), nz, cell_z, 2)
    else:
        field = rng.standard_normal((cx, cy, nz), dtype=_F32)
    field = _upsample_axis(field, nx, cell_px, 0)
    return _upsample_axis(field, ny, cell_px, 1)


def _blur_plane(vol: np.ndarray, sigma: float) -> np.ndarray:
    """Separable in-plane Gaussian blur (sigma in voxels) of an (X, Y, Z) volume, edges replicated."""
    if sigma <= 0:
        return vol
    radius = int(math.ceil(3 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel = (kernel / kernel.sum()).astype(_F32)
    out = vol
    for axis in (0, 1):
        pad = [(0, 0)] * 3
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for k, weight in enumerate(kernel):
            window = padded[k:k + n] if axis == 0 else padded[:, k:k + n]
            acc += weight * window
        out = acc
    return out


# --------------------------------------------------------------------------------------------- random draws


_GROUP_PARAMS: dict[str, dict[str, tuple[float, float]]] = {
    # basal LV cavity radius, wall thickness (mm), LV ejection fraction, epicardial length (mm),
    # RV depth factor, RV half-span (deg), RV ejection fraction
    "NOR": dict(r=(23, 28), w=(7, 9.5), ef=(0.58, 0.72), length=(80, 98),
                rv=(0.9, 1.2), span=(62, 78), rvef=(0.5, 0.65)),
    "MINF": dict(r=(27, 33), w=(7, 9.5), ef=(0.25, 0.42), length=(85, 102),
                 rv=(0.85, 1.15), span=(60, 75), rvef=(0.35, 0.55)),
    "DCM": dict(r=(32, 40), w=(5.5, 7.5), ef=(0.10, 0.30), length=(92, 110),
                rv=(0.8, 1.2), span=(60, 78), rvef=(0.25, 0.45)),
    "HCM": dict(r=(17, 22), w=(13, 19), ef=(0.68, 0.82), length=(76, 92),
                rv=(0.8, 1.1), span=(58, 72), rvef=(0.5, 0.65)),
    "RV": dict(r=(22, 27), w=(6.5, 9), ef=(0.5, 0.65), length=(80, 98),
               rv=(1.6, 2.1), span=(75, 95), rvef=(0.2, 0.38)),
}


def _draw_heart(rng: np.random.Generator, group: str, length: float, heights: np.ndarray) -> _Heart:
    """End-diastolic heart of ``group`` with epicardial length ``length`` (mm), sliced at ``heights``."""
    p = _GROUP_PARAMS[group]
    u = lambda key: float(rng.uniform(*p[key]))  # noqa: E731
    r_endo, wall, ef = u("r"), u("w"), u("ef")
    heights_rel = np.asarray(heights) / length
    nz = len(heights_rel)
    ang = _angles()
    wall_shape = 1.0 + _harmonics(rng, 0.12, 1, 4)[:, None] * np.ones((1, nz), _F32)
    contraction_shape = np.zeros((N_ANGLES, nz), _F32)
    if group == "HCM":  # asymmetric septal hypertrophy
        wall_shape += _F32(rng.uniform(0.2, 0.6)) * _bump(np.pi, rng.uniform(0.6, 0.9))[:, None]
    if group == "MINF":  # thinned, akinetic segment away from the septum, over part of the long axis
        centre = rng.uniform(-2.2, 2.2)
        seg = _bump(centre, rng.uniform(0.35, 0.6))[:, None]
        start = rng.uniform(0.0, 0.45)
        along = np.clip((heights_rel[None, :] - start) / 0.15, 0.0, 1.0).astype(_F32)
        wall_shape *= 1.0 - _F32(rng.uniform(0.45, 0.6)) * seg * along
        contraction_shape = 0.85 * seg * along
    long_shortening = float(rng.uniform(0.88, 0.95)) if ef > 0.4 else float(rng.uniform(0.93, 0.98))
    k_r = math.sqrt((1.0 - ef) / long_shortening)
    contraction = (1.0 - (1.0 - k_r) * (1.0 - contraction_shape)).astype(_F32)
    apex_wall = wall * float(rng.uniform(0.8, 1.1))
    rv_ef = u("rvef")
    base_angle = np.pi + rng.uniform(-0.8, 0.8)
    pap = (float(base_angle + np.pi + rng.uniform(0.6, 0.9)), float(base_angle + np.pi - rng.uniform(0.6, 0.9)))
    fat = np.clip(_harmonics(rng, 1.0, 1, 6) * 5.0 - rng.uniform(0.5, 2.5), 0.0, None).astype(_F32)
    fat += _F32(rng.uniform(1, 5)) * (_bump(np.pi + 1.35, 0.2) + _bump(np.pi - 1.35, 0.2))  # fat at the RV insertions
    return _Heart(
        r_endo=r_endo, wall=wall, len_epi=length, apex_wall=apex_wall, taper=float(rng.uniform(1.8, 2.6)),
        endo_shape=(_harmonics(rng, 0.09, 2, 7)
                    + _F32(rng.uniform(0.0, 0.08)) * np.cos(2 * (ang - rng.uniform(0, np.pi)))),
        epi_shape=_harmonics(rng, 0.04, 2, 4),
        wall_shape=wall_shape.astype(_F32), contraction=contraction, long_shortening=long_shortening,
        rv_depth=float(rng.uniform(20, 27)) * u("rv"), rv_span=math.radians(u("span")),
        rv_skew=float(rng.uniform(-0.25, 0.25)), rv_len=float(rng.uniform(0.62, 0.84)) * length,
        rv_wall=float(rng.uniform(2.0, 3.5)), rv_contraction=math.sqrt(1.0 - rv_ef),
        rv_shape=_harmonics(rng, 0.25, 1, 4), fat=fat, papillary_angles=pap,
        papillary_radius=float(rng.uniform(2.5, 4.5)),
        apex_drift=(float(rng.uniform(-8, 8)), float(rng.uniform(-8, 8))),
    )


def _draw_slices(rng: np.random.Generator, length: float) -> tuple[int, float, np.ndarray, float]:
    """Number of slices, spacing and depths so that the stack runs from the base to about the apex."""
    last = float(rng.uniform(0.9, 1.04))  # depth of the last slice / epicardial length
    first = float(rng.uniform(0.0, 0.06))
    cover = float(np.clip(length * (last - first), 50.0, 110.0))
    lo, hi = max(5, math.ceil(cover / 10.0)), min(11, math.floor(cover / 5.0))
    nz = int(rng.integers(lo, hi + 1)) + 1
    sz = round(cover / (nz - 1), 2)
    length = (nz - 1) * sz / (last - first)
    return nz, sz, first * length + sz * np.arange(nz), length


def _draw_acquisition(rng: np.random.Generator, nz: int, sz: float, heights: np.ndarray) -> _Acquisition:
    """In-plane matrix (160-232 voxels) and spacing (1.3-1.9 mm), and a random world origin."""
    nx, ny = (int(rng.integers(80, 117)) * 2 for _ in range(2))
    sxy = round(float(rng.uniform(1.3, 1.9)), 4)
    origin = (float(rng.uniform(-40, 40) - nx * sxy / 2), float(rng.uniform(-40, 40) - ny * sxy / 2),
              float(rng.uniform(-60, 0)))
    return _Acquisition((nx, ny, nz), (sxy, sxy, float(sz)), np.asarray(heights, np.float64), origin)


def _draw_scene(rng: np.random.Generator, acq: _Acquisition) -> _Scene:
    """Heart position (within ~15% of the field of view from its centre), rotations, contrast and noise."""
    fov = np.array(acq.shape[:2]) * acq.spacing[0]
    heart_in_fov = rng.uniform(-0.13, 0.13, 2) * fov
    body_angle = float(rng.uniform(-0.5, 0.5))
    heart_offset = (float(rng.uniform(5, 35)), float(rng.uniform(-40, -10)))
    c, s = math.cos(body_angle), math.sin(body_angle)
    body_centre = (float(heart_in_fov[0] - (c * heart_offset[0] - s * heart_offset[1])),
                   float(heart_in_fov[1] - (s * heart_offset[0] + c * heart_offset[1])))
    tissue = {
        "lv_blood": rng.uniform(0.95, 1.05), "rv_blood": rng.uniform(0.82, 1.0), "myo": rng.uniform(0.16, 0.32),
        "fat": rng.uniform(0.7, 1.0), "muscle": rng.uniform(0.18, 0.34), "soft": rng.uniform(0.28, 0.5),
        "liver": rng.uniform(0.25, 0.45), "lung": rng.uniform(0.02, 0.07), "spine": rng.uniform(0.3, 0.55),
        "aorta": rng.uniform(0.7, 1.0), "stomach": rng.uniform(0.1, 0.9),
    }
    return _Scene(body_centre=body_centre, body_angle=body_angle, heart_offset=heart_offset,
                  heart_angle=float(rng.uniform(-0.6, 0.6)), tissue={k: float(v) for k, v in tissue.items()},
                  noise=float(rng.uniform(0.015, 0.05)), scale=float(np.exp(rng.uniform(np.log(150), np.log(2500)))),
                  blur=float(rng.uniform(0.35, 0.8)))


# --------------------------------------------------------------------------------------------- geometry


def _plane_coords(acq: _Acquisition) -> tuple[np.ndarray, np.ndarray]:
    """Voxel-centre positions (mm) relative to the centre of the field of view, shapes (X,1,1) and (1,Y,1)."""
    nx, ny, _ = acq.shape
    s = acq.spacing[0]
    px = ((np.arange(nx) - (nx - 1) / 2) * s).astype(_F32)[:, None, None]
    py = ((np.arange(ny) - (ny - 1) / 2) * s).astype(_F32)[None, :, None]
    return px, py


def _to_frame(px: np.ndarray, py: np.ndarray, centre: tuple[float, float],
              angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates in a frame centred at ``centre`` and rotated by ``angle``."""
    c, s = _F32(math.cos(angle)), _F32(math.sin(angle))
    dx, dy = px - _F32(centre[0]), py - _F32(centre[1])
    return c * dx + s * dy, -s * dx + c * dy


def _heart_frame(scene: _Scene) -> tuple[tuple[float, float], float]:
    """Centre (mm, image frame) and angle of the heart frame."""
    c, s = math.cos(scene.body_angle), math.sin(scene.body_angle)
    ox, oy = scene.heart_offset
    centre = (scene.body_centre[0] + c * ox - s * oy, scene.body_centre[1] + s * ox + c * oy)
    return centre, scene.body_angle + scene.heart_angle


def _boundaries(heart: _Heart, heights: np.ndarray, state: float) -> dict[str, np.ndarray]:
    """Per-slice boundary radii tables, shape (Z, N_ANGLES), at cycle state 0 (ED) .. 1 (ES)."""
    len_endo = heart.len_epi - heart.apex_wall
    prof_endo_ed = _profile(heights, len_endo, heart.taper)[:, None]
    prof_endo = _profile(heights, len_endo * (1 - state * (1 - heart.long_shortening)), heart.taper)[:, None]
    prof_epi = _profile(heights, heart.len_epi, heart.taper)[:, None]
    base_endo = heart.r_endo * (1.0 + heart.endo_shape)[None, :]
    endo_ed = base_endo * prof_endo_ed
    epi_ed = (heart.r_endo * (1.0 + heart.epi_shape)[None, :] + heart.wall * heart.wall_shape.T) * prof_epi
    epi_ed = np.maximum(epi_ed, endo_ed + 2.5 * (endo_ed > 0))
    endo = base_endo * prof_endo * (1.0 - state * (1.0 - heart.contraction.T))
    epi = np.sqrt(endo**2 + epi_ed**2 - endo_ed**2)  # myocardial area conserved per slice and angle
    rv_prof = _profile(heights, heart.rv_len, 2.0)[:, None]
    rel = _wrap(_angles() - (np.pi + heart.rv_skew)) / heart.rv_span
    crescent = np.clip(np.cos(np.clip(rel, -1, 1) * np.pi / 2), 0, 1) ** 0.6
    depth = heart.rv_depth * (1 - state * (1 - heart.rv_contraction)) * rv_prof * crescent * (1 + heart.rv_shape)
    depth = np.where(depth > 1.0, depth, 0.0)
    outer = epi + depth + heart.rv_wall * np.clip(depth / 2.0, 0.0, 1.0)  # thin RV free wall over the cavity
    return {"endo": endo.astype(_F32), "epi": epi.astype(_F32), "rv": (epi + depth).astype(_F32),
            "outer": outer.astype(_F32), "fat": (outer + heart.fat[None, :]).astype(_F32)}


def _lookup(table: np.ndarray, theta_idx: np.ndarray) -> np.ndarray:
    """Gather a (Z, N_ANGLES) table at every voxel of an (X, Y, Z) angle-bin array."""
    z = np.arange(table.shape[0])[None, None, :]
    return table[z, theta_idx]


# --------------------------------------------------------------------------------------------- rendering


def _render_torso(rng: np.random.Generator, acq: _Acquisition, scene: _Scene) -> np.ndarray:
    """Noise-free torso around the heart (blood = 1): body, fat, muscle, lungs, liver, spine, aorta, blobs."""
    t = scene.tissue
    px, py = _plane_coords(acq)
    u, v = _to_frame(px, py, scene.body_centre, scene.body_angle)
    h = acq.heights.astype(_F32)[None, None, :]
    w = acq.spacing[0]
    shape = acq.shape
    def tex(cell_mm: float, amp: float) -> np.ndarray:
        return 1.0 + _F32(amp) * _smooth_field(rng, shape, cell_mm / w, 30.0 / acq.spacing[2])

    img = np.zeros(shape, _F32)

    a_b, b_b = rng.uniform(165, 215), rng.uniform(115, 150)
    theta = np.arctan2(v, u)
    r = np.sqrt(u**2 + v**2)
    theta_idx = (np.rint((theta + np.pi) * N_ANGLES / (2 * np.pi)).astype(np.intp) % N_ANGLES)
    ang = _angles()
    ell = a_b * b_b / np.sqrt((b_b * np.cos(ang)) ** 2 + (a_b * np.sin(ang)) ** 2)
    r_body = (ell * (1 + _harmonics(rng, 0.06, 2, 5)))[theta_idx[..., 0]][..., None].astype(_F32)
    r_body = r_body * (1 + _F32(rng.uniform(-0.001, 0.001)) * h)
    fat_t = (np.clip(_harmonics(rng, 1.0, 1, 4) * 10 + rng.uniform(8, 20), 3, None))[theta_idx[..., 0]][..., None]
    muscle_t = (np.clip(_harmonics(rng, 1.0, 1, 4) * 6 + rng.uniform(8, 16), 3, None))[theta_idx[..., 0]][..., None]
    d_body = r - r_body
    _paint(img, _alpha(d_body, w), t["fat"] * tex(8, 0.08))
    _paint(img, _alpha(d_body + fat_t, w), t["muscle"] * tex(6, 0.15))
    inner = _alpha(d_body + fat_t + muscle_t, w)
    _paint(img, inner, t["soft"] * tex(12, 0.25))
    _paint_ellipse(img, u, v, (-0.3 * a_b, 0.55 * b_b - 0.35 * h), (0.5 * a_b, 0.45 * b_b + 0.2 * h),
                   rng.uniform(-0.4, 0.4), t["liver"] * tex(15, 0.1), w, inner)
    _paint_ellipse(img, u, v, (rng.uniform(0.15, 0.35) * a_b, 0.45 * b_b - 0.2 * h),
                   (rng.uniform(30, 50), rng.uniform(20, 35)), rng.uniform(-1, 1), t["stomach"] * tex(10, 0.2), w, inner)
    lung_tex = _F32(t["lung"]) * (1 + 5 * np.maximum(_smooth_field(rng, shape, 3.5 / w) - 1.4, 0))  # vessels
    for side in (-1, 1):
        centre = (side * rng.uniform(0.45, 0.6) * a_b, rng.uniform(-0.15, 0.1) * b_b + 0.1 * h)
        axes = (rng.uniform(0.25, 0.35) * a_b - 0.1 * h, rng.uniform(0.45, 0.6) * b_b - 0.15 * h)
        _paint_ellipse(img, u, v, centre, axes, rng.uniform(-0.5, 0.5), lung_tex, w, inner)
    spine_c = (rng.uniform(-10, 10), 0.8 * b_b)
    _paint_ellipse(img, u, v, spine_c, (rng.uniform(35, 45), rng.uniform(25, 35)), 0.0, t["muscle"], w, inner)
    _paint_ellipse(img, u, v, spine_c, (rng.uniform(14, 19), rng.uniform(12, 17)), 0.0, t["spine"] * tex(5, 0.2),
                   w, inner)
    _paint_ellipse(img, u, v, (spine_c[0] + rng.uniform(15, 30), spine_c[1] - rng.uniform(22, 32)),
                   (rng.uniform(9, 13),) * 2, 0.0, t["aorta"], w, inner)
    hc = scene.heart_offset
    med = rng.uniform(60, 75)
    _paint_ellipse(img, u, v, (hc[0] - 10, hc[1]), (med, med * 0.85), rng.uniform(-1, 1), t["soft"] * tex(10, 0.3),
                   12.0, inner)  # mediastinum, soft-edged
    _paint_blobs(rng, img, u, v, h, (a_b, b_b), hc, med, w, inner)
    return img


def _paint_ellipse(img: np.ndarray, u: np.ndarray, v: np.ndarray, centre, axes, angle: float,
                   value, w: float, mask: np.ndarray) -> None:
    """Paint a (possibly slice-dependent) rotated ellipse, restricted by ``mask``, inside its bounding box."""
    box = _box(u, v, centre, max(float(np.max(axes[0])), float(np.max(axes[1]))) + 2 * w)
    if box is None:
        return
    img, u, v, mask = img[box], u[box], v[box], mask[box]
    if isinstance(value, np.ndarray) and value.ndim == 3:
        value = value[box]
    c, s = _F32(math.cos(angle)), _F32(math.sin(angle))
    du, dv = u - np.asarray(centre[0], _F32), v - np.asarray(centre[1], _F32)
    a, b = c * du + s * dv, -s * du + c * dv
    ax0 = np.maximum(np.asarray(axes[0], _F32), 1.0)
    ax1 = np.maximum(np.asarray(axes[1], _F32), 1.0)
    q = np.sqrt((a / ax0) ** 2 + (b / ax1) ** 2) + _F32(1e-6)
    r = np.sqrt(a**2 + b**2)
    _paint(img, _alpha(r * (1 - 1 / q), w) * mask, value)


def _box(u: np.ndarray, v: np.ndarray, centre, radius: float) -> tuple[slice, slice] | None:
    """In-plane index box of the voxels within ``radius`` (mm, per axis) of ``centre`` in the (u, v) frame."""
    cu, cv = np.asarray(centre[0]), np.asarray(centre[1])
    near = ((u[..., 0] > cu.min() - radius) & (u[..., 0] < cu.max() + radius)
            & (v[..., 0] > cv.min() - radius) & (v[..., 0] < cv.max() + radius))
    rows, cols = np.flatnonzero(near.any(1)), np.flatnonzero(near.any(0))
    if rows.size == 0 or cols.size == 0:
        return None
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _paint_blobs(rng: np.random.Generator, img: np.ndarray, u, v, h, body: tuple[float, float],
                 heart: tuple[float, float], keep_out: float, w: float, mask: np.ndarray) -> None:
    """A dozen soft blobs (vessels, bowel, fat) of random size and brightness away from the heart."""
    for _ in range(int(rng.integers(8, 16))):
        for _try in range(10):
            cu, cv = rng.uniform(-0.75, 0.75) * body[0], rng.uniform(-0.7, 0.8) * body[1]
            if math.hypot(cu - heart[0], cv - heart[1]) > keep_out + 10:
                break
        ch = rng.uniform(0, 100)
        rad = rng.uniform(3, 14)
        ax_u, ax_v = rad * rng.uniform(0.6, 1.6), rad * rng.uniform(0.6, 1.6)
        axes = (ax_u, ax_v * np.sqrt(np.clip(1 - ((h - ch) / rng.uniform(15, 50)) ** 2, 0, 1)))
        _paint_ellipse(img, u, v, (cu, cv), axes, rng.uniform(0, np.pi), rng.uniform(0.05, 0.95), w, mask)


def _bias_field(rng: np.random.Generator, acq: _Acquisition) -> np.ndarray:
    """Smooth multiplicative coil-sensitivity field (mean about 1)."""
    px, py = _plane_coords(acq)
    fov = acq.shape[0] * acq.spacing[0]
    g = rng.uniform(-0.5, 0.5, 2)
    lin = _F32(g[0] / fov) * px + _F32(g[1] / fov) * py
    smooth = _F32(rng.uniform(0.1, 0.25)) * _smooth_field(rng, acq.shape, 80.0 / acq.spacing[0], 60.0 / acq.spacing[2])
    return np.exp(lin + smooth).astype(_F32)


def _heart_crop(acq: _Acquisition, heart: _Heart, centre: tuple[float, float]) -> tuple[slice, slice]:
    """Index box around the heart that holds every heart structure in every frame."""
    reach = heart.r_endo * 1.3 + heart.wall * 2.0 + heart.rv_depth * 1.5 + heart.rv_wall + float(heart.fat.max()) + 20
    reach += max(abs(heart.apex_drift[0]), abs(heart.apex_drift[1]))
    s = acq.spacing[0]
    out = []
    for axis in (0, 1):
        n = acq.shape[axis]
        c = centre[axis] / s + (n - 1) / 2
        out.append(slice(int(max(0, math.floor(c - reach / s))), int(min(n, math.ceil(c + reach / s) + 1))))
    return out[0], out[1]


def _render_heart(img: np.ndarray, acq: _Acquisition, scene: _Scene, heart: _Heart, state: float,
                  crop: tuple[slice, slice], blood_tex: np.ndarray) -> np.ndarray:
    """Paint the heart at cycle ``state`` into ``img`` (in place) and return the label volume."""
    centre, angle = _heart_frame(scene)
    px, py = _plane_coords(acq)
    a, b = _to_frame(px[crop[0]], py[:, crop[1]], centre, angle)
    rel = acq.heights.astype(_F32) / _F32(heart.len_epi)
    a = a - _F32(heart.apex_drift[0]) * rel**2
    b = b - _F32(heart.apex_drift[1]) * rel**2
    r = np.sqrt(a**2 + b**2)
    theta_idx = np.rint((np.arctan2(b, a) + np.pi) * (N_ANGLES / (2 * np.pi))).astype(np.intp) % N_ANGLES
    tab = _boundaries(heart, acq.heights, state)
    endo, epi, rv, outer, fat = (_lookup(tab[k], theta_idx) for k in ("endo", "epi", "rv", "outer", "fat"))
    w = acq.spacing[0]
    t = scene.tissue
    sub = img[crop[0], crop[1]]
    _paint(sub, _alpha(r - fat, w), t["fat"])
    _paint(sub, _alpha(r - outer, w), t["myo"])
    d_rv = np.maximum(epi - r, r - rv)
    _paint(sub, _alpha(d_rv, w), t["rv_blood"] * blood_tex)
    _paint(sub, _alpha(r - endo, w), t["lv_blood"] * blood_tex)
    _paint_papillary(sub, a, b, heart, tab["endo"], acq.heights, state, w, t["myo"])
    img[crop[0], crop[1]] = sub
    labels = np.zeros(acq.shape, np.uint8)
    lab = np.zeros(sub.shape, np.uint8)
    lab[d_rv < 0] = LABELS["RV"]
    lab[r < epi] = LABELS["MYO"]
    lab[r < endo] = LABELS["LV"]
    labels[crop[0], crop[1]] = lab
    return labels


def _paint_papillary(sub: np.ndarray, a: np.ndarray, b: np.ndarray, heart: _Heart, endo_tab: np.ndarray,
                     heights: np.ndarray, state: float, w: float, value: float) -> None:
    """Two dark papillary muscles inside the mid-ventricular LV cavity (labelled LV, as in ACDC)."""
    len_endo = heart.len_epi - heart.apex_wall
    t = heights / len_endo
    size = heart.papillary_radius * np.clip(np.minimum((t - 0.15) / 0.15, (0.8 - t) / 0.15), 0, 1) * (1 + 0.3 * state)
    for ang in heart.papillary_angles:
        k = int(np.rint((_wrap(ang) + np.pi) * N_ANGLES / (2 * np.pi))) % N_ANGLES
        dist = endo_tab[:, k] * 0.72
        ca = (dist * math.cos(ang)).astype(_F32)[None, None, :]
        cb = (dist * math.sin(ang)).astype(_F32)[None, None, :]
        d = np.sqrt((a - ca) ** 2 + (b - cb) ** 2) - size.astype(_F32)[None, None, :]
        _paint(sub, _alpha(d, w) * (size > 0.5)[None, None, :], value)


def _acquire(clean: np.ndarray, scene: _Scene, bias: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur, bias, Rician noise and integer intensity scale (values as int16 would store them)."""
    img = _blur_plane(clean, scene.blur) * bias
    sigma = _F32(scene.noise)
    re = img + sigma * rng.standard_normal(img.shape, dtype=_F32)
    im = sigma * rng.standard_normal(img.shape, dtype=_F32)
    out = np.sqrt(re * re + im * im) * _F32(scene.scale)
    return np.clip(np.rint(out), 0, 32767).astype(_F32)


def cycle_states(num_frames: int, ed_frame: int, es_frame: int) -> np.ndarray:
    """Contraction state per frame (index 0 = frame 1): 0 at ED, 1 at ES, rapid filling then diastasis."""
    f = (np.arange(num_frames) - (ed_frame - 1)) % num_frames
    sys_len = (es_frame - ed_frame) % num_frames
    dia_len = num_frames - sys_len
    systole = 0.5 * (1 - np.cos(np.pi * np.clip(f / max(sys_len, 1), 0, 1)))
    filling = 0.5 * (1 + np.cos(np.pi * np.clip((f - sys_len) / max(0.6 * dia_len, 1), 0, 1)))
    return np.where(f <= sys_len, systole, filling)


# --------------------------------------------------------------------------------------------- public API


def make_subject(subject_id: int, seed: int = 0, with_cine: bool = False) -> PhantomSubject:
    """Generate one subject, deterministic from (seed, subject_id); ED and ES frames always, cine optionally."""
    if subject_id < 1:
        raise ValueError(f"subject_id must be >= 1, got {subject_id}")
    rng = np.random.default_rng([int(seed), int(subject_id)])
    group = group_of(subject_id)
    nz, sz, heights, length = _draw_slices(rng, float(rng.uniform(*_GROUP_PARAMS[group]["length"])))
    heart = _draw_heart(rng, group, length, heights)
    acq = _draw_acquisition(rng, nz, sz, heights)
    scene = _draw_scene(rng, acq)
    num_frames = int(rng.integers(15, 36))
    es_frame = 1 + int(round(num_frames * rng.uniform(0.3, 0.45)))
    height, weight = round(float(rng.normal(171, 9)), 1), round(float(np.clip(rng.normal(78, 14), 45, 140)), 1)
    torso = _render_torso(rng, acq, scene)
    bias = _bias_field(rng, acq)
    crop = _heart_crop(acq, heart, _heart_frame(scene)[0])
    crop_shape = (crop[0].stop - crop[0].start, crop[1].stop - crop[1].start, nz)
    blood_tex = 1 + _F32(0.06) * _smooth_field(rng, crop_shape, 6.0)  # mild flow-related inhomogeneity
    states = cycle_states(num_frames, 1, es_frame)
    frames = range(1, num_frames + 1) if with_cine else (1, es_frame)
    images, labels = {}, {}
    for frame in frames:
        clean = torso.copy()
        labels[frame] = _render_heart(clean, acq, scene, heart, float(states[frame - 1]), crop, blood_tex)
        images[frame] = _acquire(clean, scene, bias, np.random.default_rng([int(seed), int(subject_id), 1, frame]))
    cine = np.stack([images[f] for f in frames], axis=-1) if with_cine else None
    keep = (1, es_frame)
    return PhantomSubject(subject_id=int(subject_id), group=group, spacing=acq.spacing, ed_frame=1,
                          es_frame=es_frame, num_frames=num_frames, height=height, weight=weight,
                          images={f: images[f] for f in keep}, labels={f: labels[f] for f in keep},
                          cine=cine, origin=acq.origin)


def info_text(subject: PhantomSubject) -> str:
    """``Info.cfg`` content in ACDC's exact format."""
    return (f"ED: {subject.ed_frame}\nES: {subject.es_frame}\nGroup: {subject.group}\n"
            f"Height: {subject.height:.1f}\nNbFrame: {subject.num_frames}\nWeight: {subject.weight:.1f}\n")


def read_info(path: str | os.PathLike) -> dict[str, str]:
    """Parse an ACDC ``Info.cfg`` (``key: value`` lines) into a dict of strings."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise DataError(path, f"cannot read Info.cfg ({err})") from err
    out = {}
    for line in lines:
        if ":" in line:
            key, value = line.split(":", 1)
            out[key.strip()] = value.strip()
    if not {"ED", "ES", "Group"} <= out.keys():
        raise DataError(path, "Info.cfg lacks one of ED, ES, Group")
    return out


def _nifti(array: np.ndarray, spacing: Sequence[float], origin: Sequence[float], dtype: type) -> "nib.Nifti1Image":
    """NIfTI-1 image with affine diag(spacing) + origin and millimetre units."""
    import nibabel as nib

    affine = np.diag([*map(float, spacing[:3]), 1.0])
    affine[:3, 3] = origin
    img = nib.Nifti1Image(np.asarray(array).astype(dtype), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_zooms(tuple(float(s) for s in spacing) + (1.0,) * (array.ndim - 3))
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def write_subject(subject: PhantomSubject, out_dir: str | os.PathLike) -> Path:
    """Write one subject in the ACDC layout under ``out_dir/patientXXX`` and return that folder."""
    import nibabel as nib

    folder = Path(out_dir) / subject.name
    folder.mkdir(parents=True, exist_ok=True)
    for frame in (subject.ed_frame, subject.es_frame):
        stem = f"{subject.name}_frame{frame:02d}"
        nib.save(_nifti(subject.images[frame], subject.spacing, subject.origin, np.int16), folder / f"{stem}.nii.gz")
        nib.save(_nifti(subject.labels[frame], subject.spacing, subject.origin, np.uint8),
                 folder / f"{stem}_gt.nii.gz")
    if subject.cine is not None:
        nib.save(_nifti(subject.cine, subject.spacing, subject.origin, np.int16), folder / f"{subject.name}_4d.nii.gz")
    (folder / "Info.cfg").write_text(info_text(subject))
    return folder


def _make_and_write(args: tuple[int, int, bool, str]) -> dict:
    """Worker: generate and write one subject; return its summary for the marker file."""
    subject_id, seed, with_cine, out_dir = args
    subject = make_subject(subject_id, seed=seed, with_cine=with_cine)
    write_subject(subject, out_dir)
    return {"id": subject.name, "group": subject.group, "ed": subject.ed_frame, "es": subject.es_frame,
            "shape": list(subject.images[subject.ed_frame].shape), "spacing": list(subject.spacing)}


def _params(num_subjects: int, seed: int, first_id: int, with_cine: bool) -> dict:
    """The parameters that define a phantom dataset (what the marker file must match)."""
    return {"num_subjects": int(num_subjects), "seed": int(seed), "first_id": int(first_id),
            "with_cine": bool(with_cine), "phantom_version": PHANTOM_VERSION}


def write_phantom(out_dir: str | os.PathLike, num_subjects: int = 100, seed: int = 0, first_id: int = 1,
                  with_cine: bool = False, num_workers: int = 0) -> Path:
    """Generate ``num_subjects`` subjects into ``out_dir`` atomically, with the marker ``phantom.json``."""
    from pix2rep_bundle import __version__

    if num_subjects < 1:
        raise ValueError(f"num_subjects must be >= 1, got {num_subjects}")
    out_dir = Path(out_dir)
    ids = list(range(int(first_id), int(first_id) + int(num_subjects)))
    start = time.perf_counter()
    print(f"phantom: generating {num_subjects} subjects (seed {seed}) into {out_dir}", flush=True)
    with replaced_directory(out_dir, "phantom") as tmp:
        jobs = [(i, int(seed), bool(with_cine), str(tmp)) for i in ids]
        summaries = []
        for done, summary in enumerate(_run_jobs(jobs, num_workers), start=1):
            summaries.append(summary)
            if done % max(1, num_subjects // 10) == 0 or done == num_subjects:
                print(f"phantom: {done}/{num_subjects} subjects ({time.perf_counter() - start:.1f} s)", flush=True)
        marker = {**_params(num_subjects, seed, first_id, with_cine), "package_version": __version__,
                  "generator": "pix2rep_bundle.data.phantom", "groups": list(GROUPS), "labels": LABELS,
                  "subjects": summaries}
        write_json_atomic(tmp / MARKER, marker)
        _make_readable(tmp)
    print(f"phantom: wrote {num_subjects} subjects to {out_dir} in {time.perf_counter() - start:.1f} s", flush=True)
    return out_dir


def _chmod_default(path: Path, mode: int) -> None:
    """Give a (private, temporary) file or folder the usual permissions ``mode`` under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


def _make_readable(folder: Path) -> None:
    """The dataset folder and its marker get the usual permissions (temporary ones are private)."""
    _chmod_default(folder, 0o777)
    _chmod_default(folder / MARKER, 0o666)


def _run_jobs(jobs: list[tuple[int, int, bool, str]], num_workers: int) -> Iterable[dict]:
    """Run the per-subject jobs in order, in this process or a process pool."""
    if num_workers and num_workers > 0 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=int(num_workers)) as pool:
            yield from pool.map(_make_and_write, jobs, chunksize=max(1, len(jobs) // (4 * num_workers)))
        return
    for job in jobs:
        yield _make_and_write(job)


def phantom_matches(out_dir: str | os.PathLike, num_subjects: int = 100, seed: int = 0, first_id: int = 1,
                    with_cine: bool = False) -> bool:
    """Whether ``out_dir`` holds a complete phantom made with these parameters."""
    out_dir = Path(out_dir)
    try:
        marker = json.loads((out_dir / MARKER).read_text())
    except (OSError, ValueError):
        return False
    wanted = _params(num_subjects, seed, first_id, with_cine)
    if any(marker.get(k) != v for k, v in wanted.items()):
        return False
    return all((out_dir / subject_name(i) / "Info.cfg").is_file() for i in range(first_id, first_id + num_subjects))


def ensure_phantom(out_dir: str | os.PathLike, num_subjects: int = 100, seed: int = 0,
                   with_cine: bool = False) -> Path:
    """Return ``out_dir`` after making sure it holds the phantom with these parameters (generated if not).

    A folder that exists, is not empty and was not made as a phantom by the bundle is left alone and a DataError
    is raised (:func:`pix2rep_bundle.outputs.check_replaceable`). Concurrent callers (e.g. several ranks) are serialised by a lock file.
    """
    out_dir = Path(out_dir)
    if phantom_matches(out_dir, num_subjects, seed, 1, with_cine):
        return out_dir
    check_replaceable(out_dir, "phantom")  # before the lock file is made beside it
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with _lock(out_dir.parent / f".{out_dir.name}.lock"):
        if phantom_matches(out_dir, num_subjects, seed, 1, with_cine):
            return out_dir
        write_phantom(out_dir, num_subjects=num_subjects, seed=seed, with_cine=with_cine)
    return out_dir


class _lock:
    """Exclusive advisory file lock (POSIX ``fcntl``; a no-op where unavailable)."""

    def __init__(self, path: Path):
        self.path, self.handle = path, None

    def __enter__(self) -> "_lock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX
            return self
        self.handle = open(self.path, "a")
        fcntl.flock(self.handle, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            import fcntl

            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()


# --------------------------------------------------------------------------------------------- preview


_CONTOUR_COLOURS = {"RV": "#ff4040", "MYO": "#40e040", "LV": "#40a0ff"}


def _load_dir_subjects(folder: Path, subject_ids: Sequence[int | str] | None, max_subjects: int) -> list[dict]:
    """Read ED/ES images (and labels when present) of a few subjects of an ACDC-layout folder."""
    import nibabel as nib

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
            img = nib.load(d / f"{d.name}_frame{f:02d}.nii.gz")
            gt = d / f"{d.name}_frame{f:02d}_gt.nii.gz"
            frames[key] = (f, np.asarray(img.dataobj, np.float32),
                           np.asarray(nib.load(gt).dataobj, np.uint8) if gt.exists() else None)
        out.append({"name": d.name, "group": info["Group"], "frames": frames,
                    "spacing": tuple(float(z) for z in img.header.get_zooms()[:3])})
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
    return [{"name": s.name, "group": s.group, "spacing": s.spacing,
             "frames": {"ED": (s.ed_frame, s.images[s.ed_frame], s.labels[s.ed_frame]),
                        "ES": (s.es_frame, s.images[s.es_frame], s.labels[s.es_frame])}}
            for s in list(subjects)[:max_subjects]]


def draw_preview(subjects_or_dir: Sequence[PhantomSubject] | str | os.PathLike, png_path: str | os.PathLike,
                 subject_ids: Sequence[int | str] | None = None, max_subjects: int = 4,
                 frames: Sequence[str] = ("ED", "ES"), max_slices: int = 8, panel_inches: float = 2.2,
                 dpi: int = 80) -> Path:
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
    fig, axes = plt.subplots(len(rows), ncols, figsize=(ncols * panel_inches, len(rows) * panel_inches * 1.08),
                             squeeze=False, facecolor="black")
    for (s, key), ax_row in zip(rows, axes):
        frame, image, label = s["frames"][key]
        _draw_row(ax_row, image, label, f"{s['name']} {s['group']} {key} (frame {frame:02d})")
    handles = [plt.Line2D([], [], color=c, label=n) for n, c in _CONTOUR_COLOURS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False, labelcolor="white")
    fig.tight_layout(rect=(0, 0.03, 1, 1), pad=0.3)
    png_path = Path(png_path)
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, facecolor="black", pil_kwargs={"optimize": True})
        _chmod_default(tmp, 0o666)
    plt.close(fig)
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
        ax.set_title(f"{title}\nslice {z + 1}/{nz}" if col == 0 else f"slice {z + 1}/{nz}",
                     fontsize=6, color="white", loc="left")

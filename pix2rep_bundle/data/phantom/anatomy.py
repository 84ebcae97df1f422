"""The phantom's anatomy and random draws: subject types, smooth random fields, the heart's shape per pathology
group, slice geometry and the boundary look-up tables. Names with a leading underscore are private to the
phantom package."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pix2rep_bundle.data.records import subject_name

GROUPS: tuple[str, ...] = ("NOR", "MINF", "DCM", "HCM", "RV")
LABELS: dict[str, int] = {"background": 0, "RV": 1, "MYO": 2, "LV": 3}
N_ANGLES = 720  # angular resolution of the boundary look-up tables
_F32 = np.float32


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


def _smooth_field(
    rng: np.random.Generator, shape: tuple[int, int, int], cell_px: float, cell_z: float = 1.0
) -> np.ndarray:
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
            window = padded[k : k + n] if axis == 0 else padded[:, k : k + n]
            acc += weight * window
        out = acc
    return out


# --------------------------------------------------------------------------------------------- random draws


_GROUP_PARAMS: dict[str, dict[str, tuple[float, float]]] = {
    # basal LV cavity radius, wall thickness (mm), LV ejection fraction, epicardial length (mm),
    # RV depth factor, RV half-span (deg), RV ejection fraction
    "NOR": dict(
        r=(23, 28), w=(7, 9.5), ef=(0.58, 0.72), length=(80, 98), rv=(0.9, 1.2), span=(62, 78), rvef=(0.5, 0.65)
    ),
    "MINF": dict(
        r=(27, 33), w=(7, 9.5), ef=(0.25, 0.42), length=(85, 102), rv=(0.85, 1.15), span=(60, 75), rvef=(0.35, 0.55)
    ),
    "DCM": dict(
        r=(32, 40), w=(5.5, 7.5), ef=(0.10, 0.30), length=(92, 110), rv=(0.8, 1.2), span=(60, 78), rvef=(0.25, 0.45)
    ),
    "HCM": dict(
        r=(17, 22), w=(13, 19), ef=(0.68, 0.82), length=(76, 92), rv=(0.8, 1.1), span=(58, 72), rvef=(0.5, 0.65)
    ),
    "RV": dict(r=(22, 27), w=(6.5, 9), ef=(0.5, 0.65), length=(80, 98), rv=(1.6, 2.1), span=(75, 95), rvef=(0.2, 0.38)),
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
        r_endo=r_endo,
        wall=wall,
        len_epi=length,
        apex_wall=apex_wall,
        taper=float(rng.uniform(1.8, 2.6)),
        endo_shape=(
            _harmonics(rng, 0.09, 2, 7) + _F32(rng.uniform(0.0, 0.08)) * np.cos(2 * (ang - rng.uniform(0, np.pi)))
        ),
        epi_shape=_harmonics(rng, 0.04, 2, 4),
        wall_shape=wall_shape.astype(_F32),
        contraction=contraction,
        long_shortening=long_shortening,
        rv_depth=float(rng.uniform(20, 27)) * u("rv"),
        rv_span=math.radians(u("span")),
        rv_skew=float(rng.uniform(-0.25, 0.25)),
        rv_len=float(rng.uniform(0.62, 0.84)) * length,
        rv_wall=float(rng.uniform(2.0, 3.5)),
        rv_contraction=math.sqrt(1.0 - rv_ef),
        rv_shape=_harmonics(rng, 0.25, 1, 4),
        fat=fat,
        papillary_angles=pap,
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
    origin = (
        float(rng.uniform(-40, 40) - nx * sxy / 2),
        float(rng.uniform(-40, 40) - ny * sxy / 2),
        float(rng.uniform(-60, 0)),
    )
    return _Acquisition((nx, ny, nz), (sxy, sxy, float(sz)), np.asarray(heights, np.float64), origin)


def _draw_scene(rng: np.random.Generator, acq: _Acquisition) -> _Scene:
    """Heart position (within ~15% of the field of view from its centre), rotations, contrast and noise."""
    fov = np.array(acq.shape[:2]) * acq.spacing[0]
    heart_in_fov = rng.uniform(-0.13, 0.13, 2) * fov
    body_angle = float(rng.uniform(-0.5, 0.5))
    heart_offset = (float(rng.uniform(5, 35)), float(rng.uniform(-40, -10)))
    c, s = math.cos(body_angle), math.sin(body_angle)
    body_centre = (
        float(heart_in_fov[0] - (c * heart_offset[0] - s * heart_offset[1])),
        float(heart_in_fov[1] - (s * heart_offset[0] + c * heart_offset[1])),
    )
    tissue = {
        "lv_blood": rng.uniform(0.95, 1.05),
        "rv_blood": rng.uniform(0.82, 1.0),
        "myo": rng.uniform(0.16, 0.32),
        "fat": rng.uniform(0.7, 1.0),
        "muscle": rng.uniform(0.18, 0.34),
        "soft": rng.uniform(0.28, 0.5),
        "liver": rng.uniform(0.25, 0.45),
        "lung": rng.uniform(0.02, 0.07),
        "spine": rng.uniform(0.3, 0.55),
        "aorta": rng.uniform(0.7, 1.0),
        "stomach": rng.uniform(0.1, 0.9),
    }
    return _Scene(
        body_centre=body_centre,
        body_angle=body_angle,
        heart_offset=heart_offset,
        heart_angle=float(rng.uniform(-0.6, 0.6)),
        tissue={k: float(v) for k, v in tissue.items()},
        noise=float(rng.uniform(0.015, 0.05)),
        scale=float(np.exp(rng.uniform(np.log(150), np.log(2500)))),
        blur=float(rng.uniform(0.35, 0.8)),
    )


# --------------------------------------------------------------------------------------------- geometry


def _plane_coords(acq: _Acquisition) -> tuple[np.ndarray, np.ndarray]:
    """Voxel-centre positions (mm) relative to the centre of the field of view, shapes (X,1,1) and (1,Y,1)."""
    nx, ny, _ = acq.shape
    s = acq.spacing[0]
    px = ((np.arange(nx) - (nx - 1) / 2) * s).astype(_F32)[:, None, None]
    py = ((np.arange(ny) - (ny - 1) / 2) * s).astype(_F32)[None, :, None]
    return px, py


def _to_frame(
    px: np.ndarray, py: np.ndarray, centre: tuple[float, float], angle: float
) -> tuple[np.ndarray, np.ndarray]:
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
    return {
        "endo": endo.astype(_F32),
        "epi": epi.astype(_F32),
        "rv": (epi + depth).astype(_F32),
        "outer": outer.astype(_F32),
        "fat": (outer + heart.fat[None, :]).astype(_F32),
    }


def _lookup(table: np.ndarray, theta_idx: np.ndarray) -> np.ndarray:
    """Gather a (Z, N_ANGLES) table at every voxel of an (X, Y, Z) angle-bin array."""
    z = np.arange(table.shape[0])[None, None, :]
    return table[z, theta_idx]

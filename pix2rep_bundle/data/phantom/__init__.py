"""Synthetic short-axis cardiac cine MR phantom, written in the ACDC layout.

Modules: :mod:`.anatomy` (subject types, random draws, heart shapes, slice geometry), :mod:`.rendering` (images,
labels, acquisition; :func:`make_subject`), :mod:`.writing` (ACDC-layout files, :func:`write_phantom`,
:func:`ensure_phantom`). The preview figure is drawn by ``scripts/make_phantom.py --preview``.

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

from pix2rep_bundle.data.phantom.anatomy import GROUPS, LABELS, N_ANGLES, PhantomSubject, group_of, subject_name
from pix2rep_bundle.data.phantom.rendering import cycle_states, make_subject
from pix2rep_bundle.data.phantom.writing import (
    MARKER,
    PHANTOM_VERSION,
    ensure_phantom,
    info_text,
    phantom_matches,
    read_info,
    write_phantom,
    write_subject,
)

__all__ = [
    "GROUPS",
    "LABELS",
    "MARKER",
    "N_ANGLES",
    "PHANTOM_VERSION",
    "PhantomSubject",
    "cycle_states",
    "ensure_phantom",
    "group_of",
    "info_text",
    "make_subject",
    "phantom_matches",
    "read_info",
    "subject_name",
    "write_phantom",
    "write_subject",
]

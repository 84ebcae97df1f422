"""Build a ready MONAI Label app that serves this bundle, confined to its studies folder.

    bash scripts/setup_monailabel.sh .venv-monailabel            # MONAI Label's own environment
    .venv-monailabel/bin/python scripts/monailabel_app.py --app my_app
    .venv-monailabel/bin/monailabel start_server --app my_app --studies /data/my_studies --host 127.0.0.1 \
        --conf models pix2rep --conf zoo_source github --conf sam2 false

The app is MONAI Label's ``monaibundle`` sample app (from the environment this script runs in) with this bundle's
``configs``, ``models``, ``pix2rep_bundle`` and ``LICENSE`` as its model ``pix2rep`` (``--name``), and its
``main.py`` patched: ``MyApp`` mixes in ``pix2rep_bundle.monailabel_app.StudiesGuard`` (image ids and label tags
confined to the studies folder, 4xx answers with a detail, no server on every interface without ``--host``) and
offers the ``pix2rep_representative`` active-learning strategy. ``--bundle`` is the bundle folder (by default the
one this script lies in); ``--app`` must be new or empty (``--overwrite true`` replaces an app this script built,
never another folder); it is written whole or not at all. Run it with the Python of MONAI Label's environment.
"""

from __future__ import annotations

import sys
from pathlib import Path

import fire

from pix2rep_bundle.errors import PathError

BUNDLE = Path(__file__).resolve().parents[1]


def main(app: str, bundle: str | None = None, name: str = "pix2rep", overwrite: bool = False) -> None:
    """Write the app folder ``app`` and print how to start it."""
    from pix2rep_bundle.monailabel_app import build_app
    from pix2rep_bundle.settings import as_bool

    try:
        path = build_app(app, bundle or BUNDLE, name=name, overwrite=as_bool(overwrite, "overwrite"))
    except (PathError, ValueError) as err:
        sys.exit(f"error: {err}")
    print(f"MONAI Label app written to {path}; start it with")
    print(
        f"  monailabel start_server --app {path} --studies <studies folder> --host 127.0.0.1 "
        + f"--conf models {name} --conf zoo_source github --conf sam2 false"
    )


if __name__ == "__main__":
    fire.Fire(main)

#!/usr/bin/env bash
# A virtual environment for MONAI Label beside the bundle's own: monailabel 0.8.5 needs torchvision, which
# needs torch 2.14.1 (the bundle pins 2.13.0), so it cannot share the bundle's environment.
#   bash scripts/setup_monailabel.sh .venv-monailabel
# The bundle is installed without its dependencies (monailabel brings monai, torch, nibabel, ignite).
# Then build the app with scripts/monailabel_app.py (docs/README.md, "Serve in MONAI Label").
set -euo pipefail
venv="${1:-.venv-monailabel}"
cd "$(dirname "$0")/.."
python3 -m venv "$venv"
"$venv/bin/pip" install -q torch==2.14.1 torchvision==0.29.1 monailabel==0.8.5
"$venv/bin/pip" install -q --no-deps -e .
# pydicom 3 removed a module that pydicom-seg (a monailabel dependency) imports: keep the pydicom 2 family
"$venv/bin/pip" install -q fire scipy "pydicom<3" "dicomweb-client<0.60" "pynetdicom<3"
"$venv/bin/python" -c "import monailabel, torchvision, pix2rep_bundle; print('monailabel', monailabel.__version__)"

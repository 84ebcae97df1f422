"""MONAI Label serves the bundle as git ships it: a real ``monailabel start_server`` (the app that
``scripts/monailabel_app.py`` builds from the ``monaibundle`` sample app and ``git archive HEAD`` of this bundle) lists
it at /info/, segments phantom volumes at /infer/ with the shipped ``models/model.pt`` at once, and at /train/
fine-tunes from the shipped Pix2Rep backbone with one labelled subject (its ED and ES volumes: one to train on, one
to validate), the few-shot loop inside MONAI Label. The same server refuses, with a 4xx and a detail, image ids and
label tags that lead outside its studies folder, files outside it, unknown ids and files that are not volumes; and
the server does not start on every interface without ``--host``.

MONAI Label 0.8.5 needs torch 2.14.1 and torchvision, so it runs from its own environment:
``bash scripts/setup_monailabel.sh .venv-monailabel`` then
``PIX2REP_MONAILABEL_PYTHON=.venv-monailabel/bin/python python -m pytest -q tests/test_monailabel.py``
(``.ci/run`` does both). Without that variable the tests are skipped.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import REPO

ML_PYTHON = os.environ.get("PIX2REP_MONAILABEL_PYTHON")
pytestmark = pytest.mark.skipif(
    not ML_PYTHON,
    reason="MONAI Label environment not set up (PIX2REP_MONAILABEL_PYTHON; see scripts/setup_monailabel.sh)",
)
MODEL = "pix2rep"
LABELLED_SUBJECTS = 1  # of the 6 phantom subjects in the studies folder; the other 5 are left to segment
DICE_FLOOR = 0.5  # mean Dice (RV, MYO, LV) of the shipped ACDC model on the phantom volumes (0.70 on the default one)
START_TIMEOUT_S = 300
VICTIM_ID = "../../victimdata/patient042_frame01"  # an image id that leads outside the studies folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(
    url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None, timeout: float = 600
) -> bytes:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as response:
        return response.read()


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]] | None = None) -> tuple[bytes, str]:
    """A multipart/form-data body of plain text fields (MONAI Label's /infer/ takes ``params`` as a form field) and
    files (``name: (filename, content)``)."""
    boundary = "pix2repboundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    ]
    for key, (filename, content) in (files or {}).items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"; filename="{filename}"\r\n'
        parts.append(head.encode() + b"Content-Type: application/octet-stream\r\n\r\n" + content + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def refused(url: str, method: str = "GET", fields: dict | None = None, files: dict | None = None) -> tuple[int, str]:
    """The status and ``detail`` of a request the server must refuse."""
    body, content_type = multipart(fields or {}, files)
    with pytest.raises(urllib.error.HTTPError) as info:
        request(url, method=method, body=body, headers={"Content-Type": content_type}, timeout=120)
    return info.value.code, json.loads(info.value.read()).get("detail", "")


def build_app(root: Path) -> tuple[Path, Path]:
    """The app ``scripts/monailabel_app.py`` builds, run with MONAI Label's Python, from this bundle as
    ``git archive HEAD`` ships it; the bundle lies at model/pix2rep."""
    shipped = root / "shipped"
    archive = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=REPO, capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(shipped, filter="data")
    app = root / "app"
    subprocess.run(
        [ML_PYTHON, str(shipped / "scripts" / "monailabel_app.py"), "--app", str(app), "--bundle", str(shipped)],
        check=True,
        capture_output=True,
    )
    return app, app / "model" / MODEL


def build_studies(root: Path) -> tuple[Path, dict[str, Path]]:
    """Phantom volumes as MONAI Label studies; the first subjects' labels saved as final labels."""
    from pix2rep_bundle.data.phantom import write_phantom

    phantom = root / "phantom"
    write_phantom(phantom, num_subjects=6, seed=11)
    studies, truth = root / "studies", {}
    (studies / "labels" / "final").mkdir(parents=True)
    for i, folder in enumerate(sorted(p for p in phantom.iterdir() if p.is_dir())):
        for image in sorted(folder.glob("*_frame??.nii.gz")):
            shutil.copy(image, studies / image.name)
            label = image.with_name(image.name.replace(".nii.gz", "_gt.nii.gz"))
            if i < LABELLED_SUBJECTS:
                shutil.copy(label, studies / "labels" / "final" / image.name)
            else:
                truth[image.name.replace(".nii.gz", "")] = label
    return studies, truth


def server_command(app: Path, studies: Path, port: int, host: str | None = "127.0.0.1") -> tuple[list[str], dict]:
    """``monailabel start_server`` for ``app`` on ``port`` (with ``--host`` unless None) and its environment."""
    monailabel = Path(ML_PYTHON).parent / "monailabel"
    command = [str(monailabel), "start_server", "--app", str(app), "--studies", str(studies)]
    command += ["--host", host] if host is not None else []
    command += ["--port", str(port), "--conf", "models", MODEL, "--conf", "zoo_source", "github"]
    command += ["--conf", "sam2", "false"]
    env = os.environ | {
        "PYTHONUNBUFFERED": "1",
        "CUDA_VISIBLE_DEVICES": "",
        # the `monailabel` launcher runs the `python` found on PATH
        "PATH": f"{monailabel.parent}{os.pathsep}{os.environ['PATH']}",
        "VIRTUAL_ENV": str(monailabel.parent.parent),
    }
    return command, env


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("monailabel")
    app, bundle = build_app(root)
    studies, truth = build_studies(root)
    # a volume outside the studies folder, where ``../../victimdata/<id>`` from the studies folder leads
    victim = (studies / VICTIM_ID).resolve().with_name(VICTIM_ID.split("/")[-1] + ".nii.gz")
    victim.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(sorted(studies.glob("*.nii.gz"))[-1], victim)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = root / "server.log"
    command, env = server_command(app, studies, port)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env)
    try:
        deadline = time.time() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"monailabel exited with {proc.returncode}:\n{log_path.read_text()[-5000:]}")
            try:
                request(f"{url}/info/", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.time() > deadline:
                    pytest.fail(f"monailabel did not answer in {START_TIMEOUT_S} s:\n{log_path.read_text()[-5000:]}")
                time.sleep(2)
        yield {
            "url": url,
            "app": app,
            "bundle": bundle,
            "studies": studies,
            "truth": truth,
            "log": log_path,
            "victim": victim,
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_info_lists_the_bundle_with_its_labels(server):
    info = json.loads(request(f"{server['url']}/info/"))
    model = info["models"][MODEL]
    assert model["type"] == "segmentation"
    assert model["labels"] == {"right ventricle": 1, "myocardium": 2, "left ventricle": 3}
    assert MODEL in info["trainers"]


def test_infer_segments_unlabelled_volumes_as_the_bundle_itself_does(server, tmp_path):
    """/infer/ on each unlabelled study: the label volume has the study's shape, agrees with the bundle's own
    configs/inference.yaml voxel for voxel, and scores above a Dice floor against the phantom's truth."""
    images = sorted(server["truth"])
    bundle_segmentations(server, images, tmp_path / "bundle")
    dices, seconds = [], []
    for image_id in images:
        start = time.time()
        pred = served_segmentation(server, image_id, tmp_path / f"{image_id}.nii.gz")
        seconds.append(time.time() - start)
        truth = np.asarray(nib.load(str(server["truth"][image_id])).dataobj).astype(np.int64)
        own = np.asarray(nib.load(str(tmp_path / "bundle" / f"{image_id}_seg.nii.gz")).dataobj).astype(np.int64)
        assert pred.shape == truth.shape, (pred.shape, truth.shape)
        assert set(np.unique(pred)) <= {0, 1, 2, 3}
        assert np.mean(pred == own) > 0.99, f"{image_id}: MONAI Label and configs/inference.yaml disagree"
        dices.append(
            [2 * np.sum((pred == c) & (truth == c)) / max(np.sum(pred == c) + np.sum(truth == c), 1) for c in (1, 2, 3)]
        )
    mean = np.mean(dices, axis=0)
    print(
        f"MONAI Label /infer/: {len(images)} volumes, {np.mean(seconds):.2f} s per request, "
        f"Dice RV {mean[0]:.3f} MYO {mean[1]:.3f} LV {mean[2]:.3f}"
    )
    assert mean.mean() > DICE_FLOOR, dices


def bundle_segmentations(server: dict, images: list[str], out: Path) -> None:
    """The bundle's own configs/inference.yaml, with the server's models/model.pt, on the studies ``images``."""
    inputs = json.dumps([str(server["studies"] / f"{i}.nii.gz") for i in images])
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.yaml"]
    command += ["--inputs", inputs, "--output_dir", str(out), "--bundle_root", str(server["bundle"])]
    subprocess.run(command, cwd=server["bundle"], check=True, capture_output=True)


def served_segmentation(server: dict, image_id: str, out: Path) -> np.ndarray:
    """/infer/ on the study ``image_id`` (on the CPU), saved to ``out``: its labels."""
    body, content_type = multipart({"params": json.dumps({"device": "cpu"})})
    url = f"{server['url']}/infer/{MODEL}?image={image_id}&output=image"
    out.write_bytes(request(url, method="POST", body=body, headers={"Content-Type": content_type}))
    return np.rint(np.asarray(nib.load(str(out)).dataobj)).astype(np.int64)


def assert_served_as_the_bundle_segments(server: dict, tmp_path: Path) -> None:
    """/infer/ on one study loads the current models/model.pt whole (no key left out) and agrees with the bundle's own
    configs/inference.yaml on it."""
    image_id = sorted(server["truth"])[0]
    bundle_segmentations(server, [image_id], tmp_path / "bundle")
    own = np.asarray(nib.load(str(tmp_path / "bundle" / f"{image_id}_seg.nii.gz")).dataobj).astype(np.int64)
    before = len(server["log"].read_text())
    served = served_segmentation(server, image_id, tmp_path / "served.nii.gz")
    assert "Checkpoint keys don't match" not in server["log"].read_text()[before:], "weights left out"
    assert np.mean(served == own) > 0.99


def train_one_epoch(server: dict, model_filename: str) -> str:
    """POST /train/ for one epoch on the CPU from ``models/<model_filename>``; the server's log lines it wrote."""
    params = {"max_epochs": 1, "val_split": 0.5, "model_filename": model_filename, "device": "cpu", "multi_gpu": False}
    before = len(server["log"].read_text())
    request(
        f"{server['url']}/train/{MODEL}?run_sync=true",
        method="POST",
        body=json.dumps(params).encode(),
        headers={"Content-Type": "application/json"},
    )
    return server["log"].read_text()[before:]


def test_train_fine_tunes_from_the_shipped_backbone_with_one_labelled_subject(server, tmp_path):
    """/train/ without the served model: train.yaml's default, fine-tuning from the shipped Pix2Rep backbone, on the
    one labelled subject (ED to train on, ES to validate); the new model.pt replaces the served one and starts from
    the backbone (its body lies nearer the backbone than the shipped model's does), and /infer/ serves it. MONAI Label
    0.8.5 fails on ``pretrained: false`` (``os.path.exists(None)``); a ``model_filename`` that does not exist skips
    the served model the same way (docs/README.md, MONAI Label)."""
    import torch

    from pix2rep_bundle.networks import read_backbone
    from pix2rep_bundle.slice_context import FIRST_CONV
    from pix2rep_bundle.state_dicts import first_network_state

    model = server["bundle"] / "models" / "model.pt"
    shipped = first_network_state(torch.load(model, weights_only=True))  # an ensemble's: its first network
    backbone = read_backbone(server["bundle"] / "models" / "pretrain" / "pix2rep_backbone.pt")["backbone"]
    log = train_one_epoch(server, "from_backbone.pt")
    assert "Add Checkpoint Loader" not in log, "the served model was loaded"
    trained = torch.load(model, weights_only=True)
    assert not torch.equal(trained["final_conv.weight"], shipped["final_conv.weight"]), log[-5000:]
    assert trained["final_conv.weight"].shape[0] == 4
    # the 2 labelled studies were read as raw volumes and prepared on the fly: one to train on, one to validate
    assert "VolumeSliceDataset: 1 volumes" in log and "val_mean_dice improved" in log, log[-5000:]
    run_info = json.loads((server["bundle"] / "models" / "run_info.json").read_text())["settings"]
    assert run_info["mode"] == "finetune" and run_info["pretrained_ckpt"].endswith("pix2rep_backbone.pt")
    assert run_info["slice_context"] == 0 and trained[FIRST_CONV].shape[1] == 1  # train.yaml's
    assert run_info["ensemble_members"] == 1  # one network
    body = [k for k in backbone if k in trained and not k.startswith("final_conv")]
    assert body, "no body parameter in common with the backbone"

    def distance(a: dict, b: dict) -> float:
        return sum(float((a[k].float() - b[k].float()).norm()) for k in body)

    assert distance(trained, backbone) < distance(shipped, backbone), "the new model did not start from the backbone"
    assert_served_as_the_bundle_segments(server, tmp_path)  # one network, one slice: /infer/ follows the new file


def test_train_continues_an_ensemble_with_its_slice_context_and_size(server, tmp_path):
    """/train/ from a model of models/ that sees each slice with its neighbours and is an ensemble (two copies of the
    shipped model's first network): the network is built with that model's slice context and ensemble size, the model
    is loaded, and the new model.pt keeps both; /infer/ then serves that model (as the bundle's own inference does),
    whatever form the server started with."""
    import torch

    from pix2rep_bundle.ensemble import join_networks
    from pix2rep_bundle.slice_context import FIRST_CONV
    from pix2rep_bundle.state_dicts import ensemble_size, first_network_state

    network = first_network_state(torch.load(REPO / "models" / "model.pt", weights_only=True))
    for name in ("a.pt", "b.pt"):
        torch.save(network, tmp_path / name)
    continued = server["bundle"] / "models" / "continued.pt"
    join_networks([tmp_path / "a.pt", tmp_path / "b.pt"], continued)
    assert network[FIRST_CONV].shape[1] == 3
    log = train_one_epoch(server, "continued.pt")
    assert "Add Checkpoint Loader" in log and "val_mean_dice improved" in log, log[-5000:]
    trained = torch.load(server["bundle"] / "models" / "model.pt", weights_only=True)
    assert ensemble_size(trained) == 2 and first_network_state(trained)[FIRST_CONV].shape[1] == 3
    settings = json.loads((server["bundle"] / "models" / "run_info.json").read_text())["settings"]
    assert settings["slice_context"] == 1 and settings["ensemble_members"] == 2
    assert_served_as_the_bundle_segments(server, tmp_path)


def test_activelearning_proposes_the_study_that_best_completes_the_labelled_ones(server):
    """/activelearning/pix2rep_representative: an unlabelled study, the one the bundle's selection criterion picks
    given the labelled studies (pix2rep_bundle.selection.propose_next_study, computed here independently)."""
    from pix2rep_bundle.selection import propose_next_study

    info = json.loads(request(f"{server['url']}/info/"))
    assert f"{MODEL}_representative" in info["strategies"], info["strategies"]
    studies = server["studies"]
    labelled = {p.name[: -len(".nii.gz")] for p in (studies / "labels" / "final").glob("*.nii.gz")}
    images = {p.name[: -len(".nii.gz")]: str(p) for p in studies.glob("*.nii.gz")}
    expected = propose_next_study(
        server["bundle"],
        {k: v for k, v in images.items() if k not in labelled},
        {k: v for k, v in images.items() if k in labelled},
    )
    result = json.loads(
        request(
            f"{server['url']}/activelearning/{MODEL}_representative",
            method="POST",
            body=b"{}",
            headers={"Content-Type": "application/json"},
        )
    )
    assert result["id"] == expected and result["id"] not in labelled, (result, expected, labelled)


def datastore_files(server) -> dict[str, bytes]:
    """Every file of the studies folder but MONAI Label's own bookkeeping, and the volume outside it."""
    files = {
        str(p.relative_to(server["studies"])): p.read_bytes()
        for p in server["studies"].rglob("*")
        if p.is_file() and not p.name.startswith(".") and p.name != "datastore_v2.json"
    }
    return files | {str(p): p.read_bytes() for p in server["victim"].parent.iterdir()}


def nifti_bytes(shape: tuple[int, ...], value: int = 0) -> bytes:
    """A gzipped NIfTI volume of ``shape`` filled with ``value``."""
    image = nib.Nifti1Image(np.full(shape, value, dtype=np.uint8), np.eye(4))
    return gzip.compress(image.to_bytes())


def test_datastore_refuses_ids_and_tags_that_lead_outside_the_studies_folder(server):
    """PUT /datastore/ (both routes) with ``image=../../victimdata/<id>``, a label tag with ``..``, DELETE with such
    ids: each answered 4xx with a detail naming the id, and no byte changes inside or outside the studies folder."""
    url, studies = server["url"], server["studies"]
    before = datastore_files(server)
    upload = {"file": ("patient042_frame01.nii.gz", sorted(studies.glob("*.nii.gz"))[0].read_bytes())}
    for route in ("/datastore/", "/datastore/image"):
        status, detail = refused(f"{url}{route}?image={VICTIM_ID}", "PUT", files=upload)
        assert 400 <= status < 500 and VICTIM_ID in detail and "studies folder" in detail, (status, detail)
    known = sorted(p.name[: -len(".nii.gz")] for p in studies.glob("*.nii.gz"))[-1]
    label = {"label": ("label.nii.gz", (studies / f"{known}.nii.gz").read_bytes())}
    status, detail = refused(f"{url}/datastore/label?image={known}&tag=../../../victimdata", "PUT", files=label)
    assert 400 <= status < 500 and "victimdata" in detail, (status, detail)
    for route in ("/datastore/?id=", "/datastore/image?id="):
        status, detail = refused(f"{url}{route}{VICTIM_ID}", "DELETE")
        assert 400 <= status < 500 and VICTIM_ID in detail, (status, detail)
    status, detail = refused(f"{url}/datastore/label?id={known}&tag=../../../victimdata", "DELETE")
    assert 400 <= status < 500 and "victimdata" in detail, (status, detail)
    assert datastore_files(server) == before


def test_infer_refuses_files_outside_the_studies_folder_and_unknown_ids(server):
    """/infer/ with an absolute path outside the studies folder (as ``image`` or in ``params``), a relative one, or an
    id the datastore does not hold: 403 or 404 with a detail, nothing read."""
    url, victim = server["url"], server["victim"]
    known = sorted(server["truth"])[0]
    fields = {"params": json.dumps({"device": "cpu"})}
    for image in (str(victim), VICTIM_ID + ".nii.gz"):
        status, detail = refused(f"{url}/infer/{MODEL}?image={image}&output=image", "POST", fields)
        assert status == 403 and "outside the studies folder" in detail and image in detail, (status, detail)
    override = {"params": json.dumps({"device": "cpu", "image": str(victim)})}
    status, detail = refused(f"{url}/infer/{MODEL}?image={known}&output=image", "POST", override)
    assert status == 403 and "outside the studies folder" in detail, (status, detail)
    status, detail = refused(f"{url}/infer/{MODEL}?image=patient999_frame01&output=image", "POST", fields)
    assert status == 404 and "unknown image id" in detail and "patient999_frame01" in detail, (status, detail)
    status, detail = refused(f"{url}/datastore/image?id=patient999_frame01", "DELETE")
    assert status == 404 and "patient999_frame01" in detail, (status, detail)


def test_datastore_refuses_files_that_are_not_volumes_and_keeps_nothing_of_them(server):
    """An upload that is not NIfTI (415) or not a readable 3D volume (422); a label off its image's grid or with
    values outside 0..3 (422): nothing is stored."""
    url, studies = server["url"], server["studies"]
    before = datastore_files(server)
    known = sorted(p.name[: -len(".nii.gz")] for p in studies.glob("*.nii.gz"))[-1]
    shape = nib.load(str(studies / f"{known}.nii.gz")).shape
    cases = [
        ("/datastore/image?image=new_study", {"file": ("notes.txt", b"not a volume")}, 415, "not a NIfTI file"),
        ("/datastore/image?image=new_study", {"file": ("a.nii.gz", b"not a volume")}, 422, "NIfTI"),
        ("/datastore/image?image=new_study", {"file": ("a.nii.gz", nifti_bytes((8, 8)))}, 422, "3D"),
        (f"/datastore/label?image={known}", {"label": ("l.nii.gz", nifti_bytes((4, 4, 2)))}, 422, "shape"),
        (f"/datastore/label?image={known}", {"label": ("l.nii.gz", nifti_bytes(shape, 7))}, 422, "outside 0..3"),
        ("/datastore/label?image=patient999_frame01", {"label": ("l.nii.gz", nifti_bytes(shape))}, 404, "unknown"),
    ]
    for route, files, expected, words in cases:
        status, detail = refused(f"{url}{route}", "PUT", files=files)
        assert status == expected and words in detail, (route, status, detail)
    ids = json.loads(request(f"{url}/datastore/?output=all"))["objects"]
    assert "new_study" not in ids and not ids[known]["labels"], ids[known]
    assert datastore_files(server) == before


def test_the_server_does_not_start_on_every_interface_without_host(server, tmp_path):
    """``monailabel start_server`` without ``--host`` (MONAI Label's default 0.0.0.0) stops before it listens, with a
    message that says how to serve this machine only or to expose it deliberately."""
    port = free_port()
    command, env = server_command(server["app"], server["studies"], port, host=None)
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
    try:
        deadline = time.time() + START_TIMEOUT_S
        while proc.poll() is None and time.time() < deadline:
            try:
                request(f"http://127.0.0.1:{port}/info/", timeout=5)
                pytest.fail("the server started without --host")
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(2)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    output = log_path.read_text()
    assert proc.returncode != 0, output[-3000:]
    assert "--host 127.0.0.1" in output and "--host 0.0.0.0" in output, output[-3000:]


def test_the_host_check_reads_start_server_s_command_line():
    """Which ``--host`` the guard reads: none (refused), a loopback address (served), another one (served, with a
    warning); commands other than ``start_server`` (MONAI Label's training subprocesses) are not checked."""
    code = """
import logging
from pix2rep_bundle.monailabel_app import check_served_host

logging.basicConfig(level=logging.WARNING)
assert check_served_host(["monailabel", "start_server", "--app", "a", "--host", "127.0.0.1"]) == "127.0.0.1"
assert check_served_host(["monailabel", "start_server", "-i", "::1"]) == "::1"
assert check_served_host(["monailabel", "start_server", "--host=localhost"]) == "localhost"
assert check_served_host(["monailabel", "start_server", "--host", "0.0.0.0"]) == "0.0.0.0"
assert check_served_host(["python", "-m", "monailabel.interfaces.utils.app", "-m", "train"]) is None
try:
    check_served_host(["monailabel", "start_server", "--app", "a", "--port", "8000"])
except RuntimeError as err:
    print("REFUSED", err)
"""
    result = subprocess.run([ML_PYTHON, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REFUSED monailabel start_server without --host listens on every interface" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line and "listens on" in line]
    assert len(warnings) == 1 and "0.0.0.0" in warnings[0], result.stderr[-3000:]


def test_infer_saves_its_own_label_through_the_checks(server):
    """/infer/ with ``save_label`` (as batch inference does): MONAI Label's own output passes the label checks (0..3
    on the image's grid) and is stored under the tag asked for, beside the study."""
    url = server["url"]
    image_id = sorted(server["truth"])[0]
    fields = {"params": json.dumps({"device": "cpu", "save_label": True, "label_tag": "original"})}
    body, content_type = multipart(fields)
    request(f"{url}/infer/{MODEL}?image={image_id}&output=json", "POST", body, {"Content-Type": content_type})
    saved = server["studies"] / "labels" / "original" / f"{image_id}.nii.gz"
    assert saved.is_file(), sorted(p.name for p in saved.parent.iterdir())
    assert nib.load(str(saved)).shape == nib.load(str(server["studies"] / f"{image_id}.nii.gz")).shape
    assert "original" in json.loads(request(f"{url}/datastore/?output=all"))["objects"][image_id]["labels"]

"""MONAI Label: the bundle served by the ``monaibundle`` sample app, confined to its studies folder.

MONAI Label 0.8.5 builds file paths from the ids a request brings (``PUT /datastore/?image=../../x`` writes outside
the studies folder, ``/infer/<model>?image=/any/file`` reads any file the server can read) and answers bare 500s.
This module holds the app's safety, as the bundle's code:

- :class:`StudiesDatastore`, a ``LocalDatastore`` that accepts only plain image ids and label tags (no path
  separator, no ``..``) whose files stay inside the studies folder, refuses an unknown id with 404, and refuses an
  uploaded image or label that is not a readable 3D NIfTI volume (a label: values 0..3, the image's shape and
  geometry) with 415 or 422, before anything is written;
- :class:`StudiesGuard`, a mixin for the app's ``MONAILabelApp`` subclass: it uses that datastore, lets inference
  read only the studies (by id, or a path inside the studies folder) and the server's own sessions, answers an
  unreadable study with 422, refuses a ``model_filename`` that is not a plain file name, and refuses to start a
  server that listens on every interface without ``--host`` naming it;
- :func:`build_app`, behind ``scripts/monailabel_app.py``: a ready app folder, the sample app with this bundle as
  its model and the guard and the active-learning strategy patched into its ``main.py``.

Every refusal is an HTTP 4xx whose ``detail`` names the id and the problem. This module imports ``monailabel``:
it is for the MONAI Label server's environment (``scripts/setup_monailabel.sh``).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

from fastapi import HTTPException
from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore

from pix2rep_bundle.data.records import NIFTI_SUFFIXES
from pix2rep_bundle.data.volume_checks import check_label, check_pair, load_nifti
from pix2rep_bundle.errors import DataError, PathError, error_in_chain
from pix2rep_bundle.monailabel_serving import file_form, follow_model_file
from pix2rep_bundle.outputs import replaced_directory

logger = logging.getLogger(__name__)

BUNDLE_PARTS = ("configs", "models", "pix2rep_bundle", "LICENSE")
MODEL_NAME = "pix2rep"
LOOPBACK_HOSTS = ("localhost",)


def refusal(status: int, subject: str, problem: str) -> HTTPException:
    """An HTTP error whose detail reads ``<subject>: <problem>``."""
    return HTTPException(status_code=status, detail=f"{subject}: {problem}")


def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path``, with every link and ``..`` resolved, lies inside ``folder`` (or is it)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def check_plain_name(value: Any, what: str, where: str = "the studies folder") -> str:
    """``value`` when it is a plain file name (no separator, not ``.`` or ``..``, no NUL); else a 400."""
    subject = f"{what} {value!r}"
    if not isinstance(value, str) or not value.strip():
        raise refusal(400, subject, "must be a non-empty name")
    if "\0" in value or "/" in value or "\\" in value or value in (".", ".."):
        raise refusal(400, subject, f"must be a plain name inside {where}, without a path separator or '..'")
    return value


def nifti_suffix(path: str | os.PathLike) -> str | None:
    """The NIfTI suffix ``path`` ends with, if any."""
    return next((s for s in NIFTI_SUFFIXES if os.fspath(path).endswith(s)), None)


class StudiesDatastore(LocalDatastore):
    """A ``LocalDatastore`` that never builds a path outside its studies folder from a request's id or tag, and
    only stores readable 3D NIfTI volumes (labels 0..3 on their image's grid)."""

    def studies_folder(self) -> str:
        """The studies folder, links resolved."""
        return os.path.realpath(self._datastore_path)

    def check_inside(self, path: str, subject: str) -> None:
        """A 403 when ``path`` resolves outside the studies folder."""
        if not is_inside(path, self.studies_folder()):
            raise refusal(403, subject, f"resolves outside the studies folder {self.studies_folder()}")

    def check_known_image(self, image_id: Any) -> str:
        """``image_id`` when the datastore holds it; a 404 otherwise."""
        check_plain_name(image_id, "image id")
        if image_id not in self._datastore.objects:
            raise refusal(404, f"image id {image_id!r}", "unknown image id (GET /datastore/?output=all lists them)")
        return image_id

    def check_upload(self, filename: str, subject: str, label_of: str | None = None) -> None:
        """A 415 for an upload that is not named as NIfTI, a 422 for one that is not a readable 3D volume (or, for
        a label of ``label_of``, not 0..3 on that image's grid)."""
        if nifti_suffix(filename) is None:
            raise refusal(415, subject, f"not a NIfTI file (expected a name ending in {' or '.join(NIFTI_SUFFIXES)})")
        try:
            data, affine = load_nifti(Path(filename))
            if label_of is not None:
                check_label(data, Path(filename))
                image_path = Path(self.get_image_uri(label_of))
                image, image_affine = load_nifti(image_path)
                check_pair(image, image_affine, data, affine, image_path, Path(filename))
        except DataError as err:
            raise refusal(422, subject, err.problem) from err

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        """Store an uploaded image under a plain id inside the studies folder, once it reads as a 3D volume."""
        subject = f"image id {image_id!r}"
        if image_id:
            check_plain_name(image_id, "image id")
        self.check_upload(image_filename, subject)
        name = (image_id or "upload") + nifti_suffix(image_filename)
        self.check_inside(os.path.join(self._datastore.image_path(), name), subject)
        return super().add_image(image_id, image_filename, image_info)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """Store a label of a known image under a plain tag, once it reads as 0..3 on the image's grid."""
        self.check_known_image(image_id)
        check_plain_name(label_tag, "label tag")
        subject = f"label of image id {image_id!r} (tag {label_tag!r})"
        self.check_upload(label_filename, subject, label_of=image_id)
        name = image_id + nifti_suffix(label_filename)
        self.check_inside(os.path.join(self._datastore.label_path(label_tag), name), subject)
        return super().save_label(image_id, label_filename, label_tag, label_info)

    def remove_image(self, image_id: str) -> None:
        """Remove a known image and its labels."""
        super().remove_image(self.check_known_image(image_id))

    def remove_label(self, label_id: str, label_tag: str) -> None:
        """Remove a known label."""
        self.check_known_image(label_id)
        check_plain_name(label_tag, "label tag")
        if not self.get_label_uri(label_id, label_tag):
            raise refusal(404, f"label of image id {label_id!r} (tag {label_tag!r})", "no such label")
        super().remove_label(label_id, label_tag)

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        """Update a known image's info."""
        super().update_image_info(self.check_known_image(image_id), info)

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        """Update a known label's info."""
        self.check_known_image(label_id)
        if not self.get_label_uri(label_id, check_plain_name(label_tag, "label tag")):
            raise refusal(404, f"label of image id {label_id!r} (tag {label_tag!r})", "no such label")
        super().update_label_info(label_id, label_tag, info)


def command_line_host(argv: Sequence[str]) -> str | None:
    """The ``--host`` (``-i``) that ``monailabel start_server`` was given in ``argv``, or None."""
    for i, arg in enumerate(argv):
        if arg in ("--host", "-i") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--host="):
            return arg.split("=", 1)[1]
    return None


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (127.0.0.0/8, ::1, localhost)."""
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_served_host(argv: Sequence[str]) -> str | None:
    """For ``monailabel start_server``: the host it listens on. Without ``--host`` it would listen on every
    interface (MONAI Label's default 0.0.0.0): a ``RuntimeError`` before it listens. A host other than this
    machine, named deliberately, is logged as a warning."""
    if "start_server" not in argv:
        return None
    host = command_line_host(argv)
    if host is None:
        raise RuntimeError(
            "monailabel start_server without --host listens on every interface (0.0.0.0), so that anyone who can "
            + "reach this machine can read, add and replace studies and labels: pass --host 127.0.0.1 to serve this "
            + "machine only, or --host 0.0.0.0 to expose it deliberately (docs/README.md, 'Serve in MONAI Label')"
        )
    if not is_loopback(host):
        logger.warning(
            f"MONAI Label listens on {host}: anyone who can reach it can read, add and replace studies and labels, "
            + "and run inference and training (MONAI Label has no authentication unless it is configured)"
        )
    return host


class StudiesGuard:
    """Mixin for a ``MONAILabelApp`` subclass (``class MyApp(StudiesGuard, MONAILabelApp)``): the datastore is a
    :class:`StudiesDatastore`, inference reads only the studies (and the server's own sessions), and the server
    does not listen on every interface unless ``--host`` says so."""

    def __init__(self, *args, **kwargs):
        check_served_host(sys.argv)
        super().__init__(*args, **kwargs)

    def init_datastore(self):
        """The studies folder as a :class:`StudiesDatastore` (a remote datastore as MONAI Label makes it)."""
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        logger.info(f"Init Datastore for: {self.studies} (ids confined to the studies folder)")
        return StudiesDatastore(
            self.studies,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def readable_roots(self, datastore) -> list[str]:
        """The folders inference may read: the studies folder and the server's sessions."""
        roots = [datastore.studies_folder()] if isinstance(datastore, StudiesDatastore) else []
        sessions = self.sessions() if hasattr(self, "sessions") else None
        if sessions is not None:
            roots.append(os.path.realpath(sessions.store_path))
        return roots

    def check_image_request(self, request: dict, datastore=None) -> None:
        """A 4xx unless the request's image is a study of the datastore, by id or by a path inside its folder, or
        a session the server holds; a 422 when that study is not a readable NIfTI file."""
        datastore = datastore if datastore else self.datastore()
        image = request.get("image")
        if not isinstance(image, str) or not isinstance(datastore, StudiesDatastore):
            return  # an in-memory image, or a remote datastore MONAI Label itself resolves
        if image in datastore.list_images():
            path = datastore.get_image_uri(image)
        elif os.path.isabs(image) or "/" in image or "\\" in image or image in (".", ".."):
            if not any(is_inside(image, root) for root in self.readable_roots(datastore)):
                raise refusal(
                    403,
                    f"image {image!r}",
                    f"resolves outside the studies folder {datastore.studies_folder()}: infer by the id of a study "
                    + "(PUT /datastore/image adds one)",
                )
            if not os.path.isfile(image):
                raise refusal(404, f"image {image!r}", "no such file")
            path = image
        else:
            raise refusal(404, f"image id {image!r}", "unknown image id (GET /datastore/?output=all lists them)")
        if nifti_suffix(path) is not None:
            try:
                import nibabel as nib

                nib.load(path)
            except Exception as err:  # nibabel raises many types for bad files
                raise refusal(422, f"image {image!r}", f"not a readable NIfTI file ({type(err).__name__})") from err

    def infer(self, request, datastore=None):
        """MONAI Label's inference, on a study only, with a network of the loaded file's form (slice context, ensemble
        size); a study the bundle cannot read answers 422."""
        self.check_image_request(request, datastore)
        follow_model_file(getattr(self, "_infers", {}).get(request.get("model")), request)
        try:
            return super().infer(request, datastore)
        except Exception as err:
            bad = error_in_chain(err, PathError)
            if bad is None:
                raise
            raise refusal(422, f"image {request.get('image')!r}", str(bad)) from err

    def infer_wsi(self, request, datastore=None):
        """MONAI Label's whole-slide inference, on a study only."""
        self.check_image_request(request, datastore)
        return super().infer_wsi(request, datastore)

    def train(self, request):
        """MONAI Label's training, with ``model_filename`` a plain file name inside the bundle's ``models/``; the
        network gets the slice context and the ensemble size of the model it continues (none and one when it starts
        from the backbone)."""
        name = request.get("model_filename")
        names = list(name) if isinstance(name, (list, tuple)) else [name] if name is not None else []
        for value in names:
            check_plain_name(value, "model_filename", "the bundle's models folder")
        task = getattr(self, "_trainers", {}).get(request.get("model"))
        if task is not None and hasattr(task, "bundle_path"):
            continued = os.path.join(task.bundle_path, "models", names[0] if names else "model.pt")
            members, context = file_form(continued) if request.get("pretrained", True) else (1, 0)
            task._update_overrides = functools.partial(with_model_form, task, context=context, members=members)
        return super().train(request)


def with_model_form(task: Any, overrides: dict[str, Any], context: int, members: int = 1) -> Any:
    """``task._update_overrides`` (its class's, per request: never stacked), then train.yaml's ``slice_context``
    set to ``context`` and its ``ensemble_members`` to ``members``."""
    updated = type(task)._update_overrides(task, overrides)
    overrides["slice_context"] = context
    overrides["ensemble_members"] = members
    return updated


def representative_strategies(models: dict[str, str]) -> dict[str, Any]:
    """``<name>_representative`` strategies (:class:`pix2rep_bundle.active_learning.RepresentativeStudy`) for the
    served bundles that hold this package."""
    from pix2rep_bundle.active_learning import RepresentativeStudy

    return {
        f"{name}_representative": RepresentativeStudy(path)
        for name, path in models.items()
        if (Path(path) / "pix2rep_bundle").is_dir()
    }


MAIN_IMPORTS = """\
import sys

# this bundle's package, from the app's own copy: the studies guard and the active-learning strategy
sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), "model", {name!r}))
from pix2rep_bundle.monailabel_app import StudiesGuard, representative_strategies  # noqa: E402


"""
MAIN_PATCHES = (
    # (anchor, replacement): each anchor must occur exactly once in the sample app's main.py
    ("class MyApp(MONAILabelApp):\n", "{imports}class MyApp(StudiesGuard, MONAILabelApp):\n"),
    (
        '            "first": First(),\n        }\n',
        '            "first": First(),\n        }\n        strategies.update(representative_strategies(self.models))\n',
    ),
)


def patch_main(text: str, name: str, main_path: str | os.PathLike = "main.py") -> str:
    """The sample app's ``main.py`` with the guard mixed into ``MyApp`` and the bundle's strategies added."""
    imports = MAIN_IMPORTS.format(name=name)
    for anchor, replacement in MAIN_PATCHES:
        if text.count(anchor) != 1:
            raise PathError(
                main_path, f"the monaibundle sample app changed ({anchor.strip()!r} not found once): update the patch"
            )
        text = text.replace(anchor, replacement.replace("{imports}", imports))
    return text


def sample_app() -> Path:
    """MONAI Label's ``monaibundle`` sample app, as its wheel installs it (``<prefix>/monailabel/sample-apps``)."""
    path = Path(sys.prefix) / "monailabel" / "sample-apps" / "monaibundle"
    if not (path / "main.py").is_file():
        raise PathError(
            path, "MONAI Label's monaibundle sample app not found: run with the Python of MONAI Label's environment"
        )
    return path


APP_KIND = "monailabel_app"  # the marker kind of an app folder built here (pix2rep_bundle.outputs)


def build_app(
    app: str | os.PathLike,
    bundle: str | os.PathLike,
    name: str = MODEL_NAME,
    sample: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a ready MONAI Label app at ``app``: the ``monaibundle`` sample app (``sample``, by default the
    installed one) with ``bundle``'s ``configs``, ``models``, ``pix2rep_bundle`` and ``LICENSE`` as its model
    ``name``, and its ``main.py`` patched (:func:`patch_main`). ``app`` must not exist (or be empty) unless
    ``overwrite``, and only an app folder built here is ever replaced (a folder of other files is refused even then);
    it is written whole or not at all."""
    app, bundle = Path(app), Path(bundle)
    sample = Path(sample) if sample is not None else sample_app()
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise PathError(name, "model name: must be a plain name")
    missing = [part for part in BUNDLE_PARTS if not (bundle / part).exists()]
    if missing or not (bundle / "configs" / "inference.yaml").is_file():
        raise PathError(bundle, f"not this bundle's folder (missing: {', '.join(missing) or 'configs/inference.yaml'})")
    if app.exists() and (not app.is_dir() or (any(app.iterdir()) and not overwrite)):
        raise PathError(app, "exists and is not an empty folder (pass --overwrite true to replace it)")
    if is_inside(app, bundle) or is_inside(bundle, app):
        raise PathError(app, f"the app folder and the bundle folder {bundle} must not contain each other")
    main_path = sample / "main.py"
    main = patch_main(main_path.read_text(), name, main_path)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    with replaced_directory(app, APP_KIND) as tmp:  # only an app this bundle built is ever replaced
        shutil.copytree(sample, tmp, dirs_exist_ok=True, ignore=ignore)
        (tmp / "main.py").write_text(main)
        model = tmp / "model" / name
        model.mkdir(parents=True)
        for part in BUNDLE_PARTS:
            source = bundle / part
            if source.is_dir():
                shutil.copytree(source, model / part, ignore=ignore)
            else:
                shutil.copy2(source, model / part)
    logger.info(f"MONAI Label app written to {app} (model {name!r} from {bundle})")
    return app

"""Command-line overrides checked against the config before any work: a misspelled ``--ouput_dir`` stops the run with
the nearest known name instead of becoming a new config entry that nothing reads.

``python -m monai.bundle run`` hands every ``--name value`` pair to ``ConfigWorkflow`` as a keyword argument, and
``ConfigParser.update`` sets it whether or not the config has that id: the config never learns which names were given.
:func:`check_overrides`, the first expression of every config's ``initialize``, reads them back from ``sys.argv`` when
the process is that command line (``python -m monai.bundle run`` or ``run_workflow``, also under ``torchrun``), reads
the config files it names (and its ``--args_file``) without the overrides, and checks every overridden id against
them: a top-level name must exist, a nested id ``a#b#c`` must exist along its path (a new key is accepted in an empty
mapping only, such as ``view_settings: {}``). The command's own arguments (``config_file``, ``meta_file``, ...) are
not overrides. Elsewhere (a ``ConfigWorkflow`` built in Python with keyword arguments, MONAI Label) there is no
command line of the bundle to read, and it checks nothing.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# the arguments of `python -m monai.bundle run` / `run_workflow` and of ConfigWorkflow itself: never config ids
CLI_ARGUMENTS = frozenset(
    {
        "run_id",
        "init_id",
        "final_id",
        "meta_file",
        "config_file",
        "logging_file",
        "tracking",
        "args_file",
        "workflow_name",
        "workflow_type",
        "properties_path",
    }
)
RUN_POSITIONALS = ("run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file")
BUNDLE_MAIN = os.path.join("monai", "bundle", "__main__.py")
COMMANDS = ("run", "run_workflow")


def _is_flag(argument: str) -> bool:
    """Whether a command-line token is a flag, as ``fire`` decides it (``-1`` is a number, not a flag)."""
    return argument.startswith("--") or re.match("^-[a-zA-Z]", argument) is not None


def parse_fire_arguments(args: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """``({name: raw value}, positionals)`` of a ``fire`` command line that takes ``**kwargs``, read as ``fire`` does:
    ``--name value``, ``--name=value``, ``--name`` alone (true) and ``--noname`` alone (false); dashes in a name are
    underscores."""
    named: dict[str, str] = {}
    positionals: list[str] = []
    skip = False
    for index, argument in enumerate(args):
        if skip:
            skip = False
            continue
        if not _is_flag(argument):
            positionals.append(argument)
            continue
        key, equals, value = argument.lstrip("-").partition("=")
        key = key.replace("-", "_")
        if equals:
            named[key] = value
        elif index + 1 == len(args) or _is_flag(args[index + 1]):  # a flag alone: true, or false as --noname
            negated = key.startswith("no") and key not in CLI_ARGUMENTS
            named[key[2:] if negated else key] = "False" if negated else "True"
        else:
            named[key] = args[index + 1]
            skip = True
    return named, positionals


def cli_overrides(argv: Sequence[str] | None = None) -> tuple[Any, dict[str, Any], set[str]] | None:
    """``(config files, {id: value}, ids --tracking adds)`` given on a ``python -m monai.bundle run`` command line
    (``argv``, by default ``sys.argv``), with those of its ``--args_file``; None when ``argv`` is another program's or
    names no config."""
    from fire.parser import DefaultParseValue
    from monai.bundle import ConfigParser

    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or not os.path.normpath(argv[0]).endswith(BUNDLE_MAIN) or argv[1] not in COMMANDS:
        return None
    named, positionals = parse_fire_arguments(argv[2:])
    if argv[1] == "run":  # run(run_id, init_id, final_id, meta_file, config_file, ...): positionals fill these
        named = {**dict(zip(RUN_POSITIONALS, positionals)), **named}
    values = {key: DefaultParseValue(value) for key, value in named.items()}
    if values.get("args_file"):
        from_file = ConfigParser.load_config_file(values["args_file"])
        values = {**(from_file if isinstance(from_file, Mapping) else {}), **values}
    if not values.get("config_file"):
        return None
    overrides = {key: value for key, value in values.items() if key not in CLI_ARGUMENTS}
    return values["config_file"], overrides, _tracking_ids(values.get("tracking"))


def _tracking_ids(tracking: Any) -> set[str]:
    """The ids ``--tracking`` adds to the config (e.g. ``tracking_uri``), to accept as overrides."""
    if not tracking:
        return set()
    from monai.bundle import ConfigParser
    from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

    if isinstance(tracking, str) and tracking in DEFAULT_EXP_MGMT_SETTINGS:
        settings = DEFAULT_EXP_MGMT_SETTINGS[tracking]
    elif isinstance(tracking, Mapping):
        settings = tracking
    else:
        settings = ConfigParser.load_config_files(tracking)
    return set(settings.get("configs", {}))


def _suggest(name: str, known: Sequence[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, [str(k) for k in known], n=1, cutoff=0.6)
    return f"; did you mean --{prefix}{close[0]}?" if close else ""


def unknown_id(config: Mapping[str, Any], override: str) -> str | None:
    """None when ``override`` (an id such as ``output_dir`` or ``train#trainer#max_epochs``) names something in
    ``config`` (the raw content of the config files); else what to add to "unknown setting --<override>": the nearest
    known name (``; did you mean --output_dir?``), why the path ends (``(--a is a list of 3 items)``) or nothing."""
    if override.startswith("_meta_"):
        return None
    parts = override.lstrip("+").split("#")
    node: Any = config
    for depth, part in enumerate(parts):
        path = "#".join(parts[:depth])
        if isinstance(node, Mapping):
            if part in node:
                node = node[part]
                continue
            if depth == len(parts) - 1 and depth > 0 and not node:  # a free-form mapping (e.g. view_settings: {})
                return None
            return _suggest(part, list(node), f"{path}#" if path else "")
        if isinstance(node, list):
            if re.fullmatch(r"-?\d+", part) and -len(node) <= int(part) < len(node):
                node = node[int(part)]
                continue
            return f" (--{path} is a list of {len(node)} items)"
        return f" (--{path} is a single value, not a group of settings)"
    return None


def config_names(config_file: Any) -> str:
    """The config files of a command line as one string, e.g. ``configs/train.yaml + configs/mean_teacher.yaml``."""
    if isinstance(config_file, str) and not os.path.isfile(config_file) and "," in config_file:
        config_file = config_file.split(",")  # MONAI's other way of merging configs
    files = [config_file] if isinstance(config_file, (str, os.PathLike)) else list(config_file)
    return " + ".join(os.fspath(f) for f in files)


def refuse_unknown(config: Mapping[str, Any], overrides: Iterable[str], where: str) -> None:
    """ValueError naming every override id that is not in ``config`` (the raw content of ``where``'s files), with the
    nearest known name: ``unknown setting --ouput_dir for configs/inference.yaml; did you mean --output_dir?``."""
    problems = [
        f"unknown setting --{key} for {where}{detail}"
        for key, detail in ((key, unknown_id(config, str(key))) for key in overrides)
        if detail is not None
    ]
    if problems:
        raise ValueError(" | ".join(problems))


def check_overrides(argv: Sequence[str] | None = None) -> list[str]:
    """ValueError naming every override of a ``python -m monai.bundle run`` command line that is not an id of its
    configs, with the nearest known name (``unknown setting --ouput_dir for configs/inference.yaml; did you mean
    --output_dir?``). Returns the checked ids; nothing to check outside that command line (see the module docstring)."""
    from monai.bundle import ConfigParser

    given = cli_overrides(argv)
    if given is None:
        return []
    config_file, overrides, tracking_ids = given
    config = ConfigParser.load_config_files(config_file) | dict.fromkeys(tracking_ids)
    refuse_unknown(config, overrides, config_names(config_file))
    return list(overrides)

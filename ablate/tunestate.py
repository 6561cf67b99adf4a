"""Which saved Tune experiment state a ``--resume`` restores: the newest intact one.

Ray Tune 2.60 saves a sweep's experiment state once per driver session (each start or
resume), under the session's start time ``S``: ``experiment_state-S.json`` (the trials),
beside ``searcher-state-S.pkl``, ``search_gen_state-S.json``, ``basic-variant-state-S.json``
and ``callback-states-S.pkl`` (pickles, whichever the sweep has); older sessions' files stay.
On restore Tune reads the newest of each kind (``max`` of the names). The files are copied to
the sweep's storage in place, so a driver killed mid-copy can leave the newest one cut short:
Tune then logs "Failed to restore the run state" and starts the experiment over, and the
sweep ends with planned trials missing.

``choose_state(experiment_dir)`` runs before ``Tuner.restore``: it checks the newest
session's files (the state parses as JSON, each pickle is complete, no kind another session
has is missing) and, when they are damaged, takes the newest intact older session: its files
are copied under a session name that sorts after the damaged one (so Tune's ``max`` picks
them, in storage and in the driver's staging directory alike), the damaged files are renamed
to ``*.damaged`` and a warning says so. With no intact session left it raises ``SpecError``
naming the damaged file and the way out. ``tuner.pkl`` (written once, at the start) is
checked too.
"""

from __future__ import annotations

import fnmatch
import json
import pickletools
import sys
from dataclasses import dataclass
from typing import Any

from ablate.spec import SpecError

#: The suffix damaged state files are renamed with (no Tune pattern matches it).
DAMAGED_SUFFIX = ".damaged"


@dataclass(frozen=True)
class StateChoice:
    """The session ``--resume`` restores (``session``, None: no saved state, Tune starts
    over), the damaged files set aside (``damaged``: their paths before the rename) and the
    ``warning`` printed (None when the newest session was intact)."""

    session: str | None
    damaged: tuple[str, ...] = ()
    warning: str | None = None


def _templates() -> tuple[str, list[str], str]:
    """Tune's own file-name templates: the experiment state, its sidecars, the Tuner pickle."""
    from ray.tune.callback import CallbackList
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.impl.tuner_internal import _TUNER_PKL
    from ray.tune.search.basic_variant import BasicVariantGenerator
    from ray.tune.search.search_generator import SearchGenerator
    from ray.tune.search.searcher import Searcher

    sidecars = [
        Searcher.CKPT_FILE_TMPL,
        SearchGenerator.CKPT_FILE_TMPL,
        BasicVariantGenerator.CKPT_FILE_TMPL,
        CallbackList.CKPT_FILE_TMPL,
    ]
    return TuneController.CKPT_FILE_TMPL, sidecars, _TUNER_PKL


def _session_of(template: str, name: str) -> str | None:
    """``S`` of a file named ``template.format(S)``, else None."""
    prefix, suffix = template.split("{}")
    if fnmatch.fnmatchcase(name, template.format("*")):
        return name[len(prefix) : len(name) - len(suffix)]
    return None


def pickle_problem(data: bytes) -> str | None:
    """Why ``data`` is not a complete pickle (read opcode by opcode, nothing is loaded or
    run), or None when it is one."""
    if not data:
        return "it is empty"
    try:
        last = None
        for opcode, _, _ in pickletools.genops(data):
            last = opcode.name
    except Exception as error:  # genops raises ValueError and others on a cut-short stream
        return f"it is not a complete pickle ({error})"
    return None if last == "STOP" else "it is not a complete pickle"


def state_problem(data: bytes) -> str | None:
    """Why ``data`` is not a Tune experiment state (JSON with ``trial_data`` and
    ``runner_data``), or None when it is one."""
    try:
        state = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"it is not valid JSON, most likely cut short ({error})"
    if not isinstance(state, dict) or not {"trial_data", "runner_data"} <= set(state):
        return "it holds no trial_data / runner_data"
    return None


def choose_state(experiment_dir: str, source: str = "") -> StateChoice:
    """Check the Tune experiment state in ``experiment_dir`` (a local path or URI) before a
    restore, and fall back to the newest intact session when the newest is damaged (see the
    module docstring; the warning goes to stderr).

    Raises ``SpecError`` (file: the damaged file) when ``tuner.pkl`` or every saved session
    is damaged. ``source``: the spec file, named in the message.
    """
    from ablate.preflight import filesystem

    state_template, sidecar_templates, tuner_pkl = _templates()
    fs, root = filesystem(experiment_dir)
    names = _file_names(fs, root)

    def read(name: str) -> bytes:
        with fs.open_input_stream(f"{root}/{name}") as stream:
            return stream.read()

    def way_out(path: str) -> str:
        spec = f" {source}" if source else ""
        return (
            f"restore {path} from a backup and pass --resume again, or run the sweep anew "
            f"under another name: python -m entrypoints.sweep{spec} --set name=<new name> "
            "(without --resume)"
        )

    if tuner_pkl in names:
        problem = pickle_problem(read(tuner_pkl))
        if problem:
            path = f"{experiment_dir}/{tuner_pkl}"
            raise SpecError(path, "", f"Tune's saved Tuner is damaged: {problem}; {way_out(path)}")
    sessions = sorted(s for n in names if (s := _session_of(state_template, n)) is not None)
    if not sessions:
        return StateChoice(None)
    kinds = [t for t in sidecar_templates if any(_session_of(t, n) for n in names)]

    def problems(session: str) -> list[tuple[str, str]]:
        found = []
        state_name = state_template.format(session)
        problem = state_problem(read(state_name))
        if problem:
            found.append((state_name, problem))
        for template in kinds:
            name = template.format(session)
            if name not in names:
                found.append((name, "it is missing (older sessions have one)"))
            elif problem := pickle_problem(read(name)):
                found.append((name, problem))
        return found

    damaged: list[tuple[str, str]] = []
    chosen = None
    for session in reversed(sessions):
        found = problems(session)
        if not found:
            chosen = session
            break
        damaged += found
    first_name, first_problem = damaged[0] if damaged else ("", "")
    if chosen is None:
        path = f"{experiment_dir}/{first_name}"
        raise SpecError(
            path,
            "",
            f"Tune's saved experiment state is damaged: {first_problem}, and no older intact "
            f"state is left to resume from; {way_out(path)}",
        )
    if not damaged:
        return StateChoice(chosen)
    # Tune restores the newest file of each kind: copies of the intact session under a name
    # that sorts after the damaged ones make it the newest, wherever Tune looks.
    restored = f"{sessions[-1]}_from_{chosen}"
    for template in [state_template, *kinds]:
        fs.copy_file(f"{root}/{template.format(chosen)}", f"{root}/{template.format(restored)}")
    set_aside = []
    for session in sessions:
        if session <= chosen:
            continue
        for template in [state_template, *sidecar_templates]:
            name = template.format(session)
            if name in names:
                fs.move(f"{root}/{name}", f"{root}/{name}{DAMAGED_SUFFIX}")
                set_aside.append(f"{experiment_dir}/{name}")
    warning = (
        f"warning: {experiment_dir}/{first_name} is damaged ({first_problem}); resuming from "
        f"the previous intact experiment state, {state_template.format(chosen)}: trials "
        "continue from their last checkpoints, trials started after it run again; the damaged "
        f"files are kept as *{DAMAGED_SUFFIX}"
    )
    print(warning, file=sys.stderr)
    return StateChoice(chosen, tuple(set_aside), warning)


def _file_names(fs: Any, root: str) -> set[str]:
    import pyarrow.fs

    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    return {i.base_name for i in infos if i.type == pyarrow.fs.FileType.File}

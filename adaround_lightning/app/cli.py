"""``python -m adaround_lightning [overrides]``: the Hydra application.

A thin ``@hydra.main`` wrapper over :func:`adaround_lightning.app.run.run`. Mistakes a user can fix
(:class:`~adaround_lightning.core.errors.UserError`) print one line and exit with status 2; set
``HYDRA_FULL_ERROR=1`` for the traceback.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig

from adaround_lightning.app.report import allocation_line, refinement_line
from adaround_lightning.app.run import output_dir_of, run, summary_table
from adaround_lightning.app.schema import check_overrides, register_schema
from adaround_lightning.app.settings import run_config_from
from adaround_lightning.core.atomic import atomic_write_text
from adaround_lightning.core.errors import UserError
from adaround_lightning.core.interrupt import Interrupted, stop_on_signals

__all__ = ["CONFIG_DIR", "main", "recipes"]

log = logging.getLogger("adaround_lightning")


def _config_dir() -> Path:
    # Installed wheel: the config tree is packaged inside adaround_lightning/conf.
    # Clone (editable or PYTHONPATH): it is the repository's top-level conf/.
    package = Path(__file__).resolve().parents[1]
    packaged = package / "conf"
    return packaged if packaged.is_dir() else package.parent / "conf"


#: The directory Hydra composes from (``config.yaml`` and the config groups).
CONFIG_DIR = _config_dir()
# The settings' types and defaults, which conf/config.yaml lists first.
register_schema()


def recipes() -> list[str]:
    """Names of the available recipes (``recipe=NAME``)."""
    return sorted(p.stem for p in (CONFIG_DIR / "recipe").glob("*.yaml"))


def _check_recipe(argv: list[str]) -> None:
    for arg in argv:
        key, _, value = arg.partition("=")
        simple = value and "," not in value and "(" not in value
        if key.lstrip("+~") == "recipe" and simple and value not in recipes():
            _fail(f"unknown recipe {value!r}: use recipe=NAME, NAME one of {', '.join(recipes())}")


def _fail(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.exit(2)


def _record_failure(cfg: DictConfig, message: str, **extra: str) -> Path:
    """Write ``results.json`` with ``finished: false``: a failed job never looks done."""
    try:
        out_dir = output_dir_of(run_config_from(cfg))
    except UserError:
        out_dir = Path(HydraConfig.get().runtime.output_dir)
    if rank_zero_only.rank == 0:  # under DDP only rank 0 writes
        record = {"finished": False, "error": message, **extra, "overrides": _task_overrides()}
        atomic_write_text(out_dir / "results.json", json.dumps(record, indent=2))
    return out_dir


def _stop_after_interrupt(cfg: DictConfig, stop: Interrupted) -> None:
    """One line that says how far the run got and how to continue it; exit 130 or 143."""
    kept = [o for o in _task_overrides() if not o.startswith("resume=")]
    rerun = ["python", "-m", "adaround_lightning", *kept]
    try:
        out_dir = output_dir_of(run_config_from(cfg))
        if (out_dir / "config.yaml").is_file():  # setup finished: the run dir resumes
            rerun.append(f"resume={out_dir}")
    except UserError:
        pass
    command = shlex.join(rerun)
    _record_failure(cfg, str(stop), interrupted=signal.Signals(stop.signum).name, resume=command)
    if rank_zero_only.rank == 0:
        sys.stderr.write(f"{stop}; continue with: {command}\n")
    sys.exit(stop.exit_status)


def _task_overrides() -> list[str]:
    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        with stop_on_signals(walk=False):
            results = run(cfg)
    except Interrupted as stop:
        _stop_after_interrupt(cfg, stop)
        return
    except UserError as error:
        _record_failure(cfg, str(error))
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if multirun:  # the other jobs still run; the summary lists this one as failed
            log.error("job failed: %s", error)
            return
        _fail(str(error))
        return
    except Exception as error:
        _record_failure(cfg, f"{type(error).__name__}: {error}")
        if multirun:
            log.exception("job failed")
            return
        raise
    if not results:  # a DDP rank other than 0: rank 0 reports
        return
    out_dir = results["run_dir"]
    allocation = results.get("bit_allocation")
    mixed = f"{allocation_line(allocation)}\n" if allocation else ""
    if results.get("refinement"):
        mixed += f"{refinement_line(results['refinement'])}\n"
    sys.stdout.write(
        f"\n{summary_table(results)}\n\n{mixed}"
        f"{len(results['layers'])} layers, calibration {results['calibration_seconds']:.1f}s, "
        f"total {results['seconds']:.1f}s\noutputs in {out_dir}\n"
    )


def _resume_into_same_dir(argv: list[str]) -> list[str]:
    """With ``resume=PATH``, let Hydra write into PATH too (one run, one dir)."""
    resume = [a.partition("=")[2] for a in argv if a.startswith("resume=")]
    if not resume or resume[0] in ("", "null"):
        return argv
    if not (Path(resume[0]) / "config.yaml").is_file():
        # Before Hydra creates that folder: a mistyped path must not become a run dir.
        _fail(f"resume={resume[0]} is not a run dir (no config.yaml): pass a run dir")
    if not any(a.startswith("hydra.run.dir=") for a in argv):
        return [*argv, f"hydra.run.dir={resume[0]}"]
    return argv


#: Settings whose value is a dict with free keys (layer-name patterns, builder arguments).
DICT_SETTINGS = ("quant.layer_bits", "model.kwargs")


def _dict_override(arg: str) -> str:
    """``KEY={a: 1}`` and ``KEY.a=1`` for a dict-valued ``KEY`` as Hydra accepts them.

    Hydra merges ``KEY={...}`` into the (struct-locked, empty) dict and refuses new keys, and reads
    the dots of ``quant.layer_bits.features.0.0=8`` as nesting. Both become ``++KEY={...}``,
    which adds or replaces those entries.
    """
    key, sep, value = arg.partition("=")
    if not sep or key.startswith(("+", "~")):
        return arg
    if key in DICT_SETTINGS and value.startswith("{") and value.endswith("}"):
        return f"++{key}={value}"
    for setting in DICT_SETTINGS:
        if key.startswith(f"{setting}.") and len(key) > len(setting) + 1:
            entry = key[len(setting) + 1 :]
            return f"++{setting}={{{entry}:{value}}}"
    return arg


def _why_not_a_folder(path: Path) -> str | None:
    """Why ``path`` cannot be used or made as an output folder, or None if it can."""
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                return f"{folder} is a file"
            if not os.access(folder, os.W_OK | os.X_OK):
                return f"{folder} is not writable"
            return None
    return None


def _check_output_dirs(argv: list[str]) -> None:
    """Refuse an output folder that cannot be created before Hydra tries (and tracebacks)."""
    multirun = "-m" in argv or "--multirun" in argv
    places = {"hydra.sweep.dir": "multirun"} if multirun else {"hydra.run.dir": "outputs"}
    places["output_dir"] = ""
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+") in places and value not in ("", "null"):
            places[key.lstrip("+")] = value
    for key, value in places.items():
        fixed = value.split("$", 1)[0]  # up to the first ${...} (a date, the recipe's name)
        why = _why_not_a_folder(Path(fixed or ".")) if value else None
        if why:
            shown = f"{key}={value}" if key != "hydra.run.dir" or value != "outputs" else value
            _fail(f"the output folder {shown} cannot be created ({why}): pass another {key}=DIR")


def main() -> None:
    """Console entry point."""
    _check_recipe(sys.argv[1:])
    _check_output_dirs(sys.argv[1:])
    argv = [_dict_override(arg) for arg in sys.argv[1:]]
    try:
        check_overrides(argv)
    except UserError as error:
        _fail(str(error))
    sys.argv = [sys.argv[0], *_resume_into_same_dir(argv)]
    _hydra_main()


if __name__ == "__main__":
    main()

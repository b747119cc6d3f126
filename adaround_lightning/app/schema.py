"""The settings dataclasses as Hydra structured configs: the command line's types and defaults.

The dataclasses (:class:`~adaround_lightning.app.settings.RunConfig` and its sections) hold every
default. :func:`schema_of` derives from each an OmegaConf-ready twin with the same fields, types and
defaults, a :class:`~adaround_lightning.core.choices.Choice` written as its word (OmegaConf would
read an Enum by member name, ``LAYER``, and save it so). :func:`register_schema` stores the twin of
``RunConfig`` as ``run_schema``, the first entry of ``conf/config.yaml``'s defaults, so a value of
the wrong type fails while the command line is parsed and the YAML files hold groups and recipes
only. :func:`check_overrides` reads the command line against the same schema before Hydra does, so
such a mistake ends in one ``error:`` line with exit status 2, as every other user mistake does.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Iterator
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from adaround_lightning.app.settings import RunConfig
from adaround_lightning.core.choices import Choice
from adaround_lightning.core.errors import UserError
from adaround_lightning.engine.engine_config import ENGINE_FIELDS

__all__ = ["SCHEMA_NAME", "check_overrides", "register_schema", "schema_of"]

#: The name of the root schema in Hydra's ConfigStore (``conf/config.yaml`` lists it first).
SCHEMA_NAME = "run_schema"

#: Config groups chosen on the command line (``data=imagenet``); not settings.
_GROUPS = ("recipe", "data", "model", "trainer")


def _plain(value: Any) -> Any:
    # A default as OmegaConf stores it: a Choice as its word, a nested settings object as its twin.
    if isinstance(value, Choice):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        twin = schema_of(type(value))
        return twin(**{f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)})
    return value


def _twin_field(hint: Any, spec: dataclasses.Field) -> tuple[Any, dataclasses.Field]:
    if isinstance(hint, type) and issubclass(hint, Choice):
        hint = str
    elif isinstance(hint, type) and dataclasses.is_dataclass(hint):
        hint = schema_of(hint)
    if spec.default is not dataclasses.MISSING:
        default = _plain(spec.default)
        if dataclasses.is_dataclass(default):
            return hint, dataclasses.field(default_factory=functools.partial(_plain, spec.default))
        return hint, dataclasses.field(default=default)
    if spec.default_factory is not dataclasses.MISSING:
        factory = spec.default_factory
        return hint, dataclasses.field(default_factory=lambda: _plain(factory()))
    if dataclasses.is_dataclass(hint):  # a required section: its class defaults
        return hint, dataclasses.field(default_factory=hint)
    return hint, dataclasses.field(default=MISSING)


@functools.cache
def schema_of(cls: type) -> type:
    """The OmegaConf structured-config twin of a settings dataclass.

    Args:
        cls: A settings dataclass (its nested sections are twinned too).

    Returns:
        A dataclass with the same field names, types and defaults; each ``Choice`` is a ``str``
        holding its word. Validation of values stays with ``cls`` (its ``__post_init__``).

    Example:
        >>> from adaround_lightning.engine.adaround_config import AdaroundConfig
        >>> OmegaConf.structured(schema_of(AdaroundConfig)).granularity
        'block'
    """
    hints = typing.get_type_hints(cls)
    fields = [(f.name, *_twin_field(hints[f.name], f)) for f in dataclasses.fields(cls)]
    return dataclasses.make_dataclass(f"{cls.__name__}Schema", fields)


def register_schema() -> None:
    """Store the twin of ``RunConfig`` in Hydra's ConfigStore as :data:`SCHEMA_NAME`."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=schema_of(RunConfig))


@functools.cache
def _choices(cls: type, prefix: str = "") -> dict[str, type[Choice]]:
    # Dotted setting -> its Choice class, e.g. "adaround.granularity" -> Granularity.
    out: dict[str, type[Choice]] = {}
    for name, hint in typing.get_type_hints(cls).items():
        if isinstance(hint, type) and issubclass(hint, Choice):
            out[prefix + name] = hint
        elif isinstance(hint, type) and dataclasses.is_dataclass(hint):
            out.update(_choices(hint, f"{prefix}{name}."))
    return out


def _values(override: Override) -> Iterator[Any]:
    if not override.is_sweep_override():
        yield override.value()
        return
    try:
        yield from override.sweep_iterator()
    except HydraException:  # an interval sweep: a search space, not values
        return


def _check_one(schema: Any, override: Override) -> None:
    key = override.key_or_group
    section, _, name = key.partition(".")
    if section == "adaround" and name in ENGINE_FIELDS:
        raise UserError(
            f"{key} is now engine.{name} (how the calibration runs, apart from what AdaRound "
            f"optimises): pass engine.{name}={override.input_line.partition('=')[2]}"
        )
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(schema, parent) if parent else schema
    # Only a settings section has a fixed set of keys; a free dict (trainer, model.kwargs) has none.
    structured = OmegaConf.is_dict(node) and OmegaConf.get_type(node) not in (dict, None)
    known = node.keys() if structured else ()
    if structured and leaf not in known and not override.is_force_add():
        section = parent or "the root"
        raise UserError(
            f"unknown setting {key}; valid keys of {section}: {', '.join(sorted(map(str, known)))}"
        )
    choice = _choices(RunConfig).get(key)
    for value in _values(override):
        if choice is not None and value is not None:
            choice.parse(value, key)
            continue
        try:
            OmegaConf.update(schema, key, value, merge=True, force_add=override.is_force_add())
        except OmegaConfBaseException as error:
            message = str(error).splitlines()[0]
            raise UserError(f"{key}={override.input_line.partition('=')[2]}: {message}") from None


def check_overrides(argv: list[str]) -> None:
    """Read ``key=value`` arguments against the settings' types before Hydra composes them.

    Group choices (``recipe=``, ``data=``), ``hydra.*`` and deletions are left to Hydra, as is
    a line Hydra's grammar refuses (it says why).

    Raises:
        UserError: An unknown setting, a value of the wrong type or a word a choice lacks.

    Example:
        >>> check_overrides(["adaround.iters=100", "recipe=quickstart"])
        >>> check_overrides(["adaround.iters=many"])
        Traceback (most recent call last):
        ...
        adaround_lightning.core.errors.UserError: adaround.iters=many: Value 'many' of type 'str' \
could not be converted to Integer
    """
    try:
        # Hydra's own flags (-m, --cfg job, --config-dir=...) are not overrides.
        lines = [arg for arg in argv if "=" in arg and not arg.startswith("-")]
        overrides = OverridesParser.create().parse_overrides(lines)
    except HydraException:
        return
    schema = OmegaConf.structured(schema_of(RunConfig))
    for override in overrides:
        key = override.key_or_group
        if override.is_delete() or override.package or key in _GROUPS or key.startswith("hydra"):
            continue
        try:
            _check_one(schema, override)
        except ValueError as error:
            raise UserError(str(error)) from None

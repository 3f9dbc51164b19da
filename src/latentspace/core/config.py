"""Dataclass configs that round-trip through JSON, and typer commands generated from them.

Every family's config (`LBSConfig`, `LTTConfig`, ...) subclasses `Config`. `config_command` turns a
config's fields into command-line options, so no setting is hidden in code (litgpt's habit).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import typer

from .errors import ConfigError, require_file

C = TypeVar("C", bound="Config")


@dataclasses.dataclass
class Config:
    """Base of all configs: `to_dict`, `from_dict`, `to_json`, `from_json`, `replace`, named presets."""

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """Build from a dict; unknown keys are an error that names them, nested configs are rebuilt."""
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown field(s) {unknown}; known: {sorted(fields)}")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for name, value in data.items():
            hint = hints.get(name)
            if isinstance(hint, type) and issubclass(hint, Config) and isinstance(value, dict):
                value = hint.from_dict(value)
            elif typing.get_origin(hint) is tuple and isinstance(value, list):
                value = tuple(value)
            kwargs[name] = value
        return cls(**kwargs)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls: type[C], path_or_text: str | Path) -> C:
        text = str(path_or_text)
        if not text.lstrip().startswith("{"):
            path = require_file(path_or_text, "config file", ConfigError)
            text = path.read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{cls.__name__}: config is not valid JSON ({err})") from None
        return cls.from_dict(data)

    def replace(self: C, **changes) -> C:
        return dataclasses.replace(self, **changes)

    @classmethod
    def preset(cls: type[C], name: str) -> C:
        """A named preset: the class attribute `PRESETS = {"tiny": {...}, ...}` changes only what differs."""
        presets = getattr(cls, "PRESETS", {})
        if name not in presets:
            raise ConfigError(f"{cls.__name__}: unknown preset {name!r}; known: {sorted(presets)}")
        return cls(**presets[name])


_SIMPLE = (int, float, str, bool)


def _option_type(hint):
    """The typer-compatible annotation of a config field, or None when it cannot be a CLI option."""
    origin = typing.get_origin(hint)
    if hint in _SIMPLE:
        return hint
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and args[0] in _SIMPLE:
            return typing.Optional[args[0]]  # noqa: UP045 (typer needs typing.Optional)
    if origin is typing.Literal:
        return str
    return None


def config_command(app: typer.Typer, command_name: str, config_cls: type[Config], help: str | None = None, **params):
    """Register `fn(config, **extra)` as a command whose options are the config's fields plus `params`.

    Args:
        app: the typer app to add the command to.
        command_name: the command name (so `name` stays free for an option such as the run name).
        config_cls: the dataclass whose simple fields become `--field-name` options (nested configs and
            lists are set with `--config file.json`).
        params: extra options of the command: name -> (annotation, typer.Option/Argument default).

    The decorated function receives the built config and the extra options as keyword arguments.
    """

    def decorator(fn):
        hints = typing.get_type_hints(config_cls)
        defaults = config_cls()
        parameters = []
        annotations = {}
        for pname, (annotation, default) in params.items():
            parameters.append(inspect.Parameter(pname, inspect.Parameter.KEYWORD_ONLY, default=default))
            annotations[pname] = annotation
        config_fields = []
        for field in dataclasses.fields(config_cls):
            annotation = _option_type(hints[field.name])
            if annotation is None or field.name in params:
                continue
            flag = "--" + field.name.replace("_", "-")
            if annotation is bool:  # both ways, so a field that defaults to True can be switched off
                flag = f"{flag}/--no-{flag[2:]}"
            default = getattr(defaults, field.name)
            option = typer.Option(default, flag, help=field.metadata.get("help"), rich_help_panel="Config")
            parameters.append(inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=option))
            annotations[field.name] = annotation
            config_fields.append(field.name)
        parameters.append(
            inspect.Parameter(
                "config_file",
                inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(None, "--config", help="JSON config; explicit options override it."),
            )
        )
        annotations["config_file"] = typing.Optional[Path]  # noqa: UP045

        @functools.wraps(fn)
        def command(**kwargs):
            config_file = kwargs.pop("config_file")
            base = config_cls.from_json(config_file) if config_file else defaults
            overrides = {}
            for key in config_fields:
                value = kwargs.pop(key)
                if config_file is None or value != getattr(defaults, key):
                    overrides[key] = value
            try:
                config = dataclasses.replace(base, **overrides)
            except (TypeError, ValueError) as err:
                raise ConfigError(f"{config_cls.__name__}: {err}") from None
            return fn(config, **kwargs)

        command.__signature__ = inspect.Signature(parameters)
        command.__annotations__ = annotations
        del command.__wrapped__
        app.command(command_name, help=help or fn.__doc__)(command)
        return fn

    return decorator

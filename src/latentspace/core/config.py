"""Dataclass configs that round-trip through JSON, and typer commands generated from them.

Every family's config (`LBSConfig`, `LTTConfig`, ...) subclasses `Config`. A config may hold other configs
(`train: TrainConfig`): one run config is then a tree. `config_command` turns every field of the tree into a
command-line option, dotted below the top (`--train.steps 100`, litgpt's habit), so no setting is hidden in code;
named presets change only what differs (DreamerV3's habit). `Config.override({"train.steps": 5})` is the one way
a tree is changed from a dict: presets, JSON files and the command line all go through it.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import typer

from .errors import ConfigError, require_file

C = TypeVar("C", bound="Config")


@dataclasses.dataclass
class Config:
    """Base of all configs: `to_dict`, `from_dict`, `to_json`, `from_json`, `replace`, `override`, presets."""

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Build from a dict; unknown keys and wrong types are an error that names them.

        A nested config given as a dict is merged field by field into that field's default.
        """
        return _build(cls, None, _tree(cls, data, cls.__name__), cls.__name__)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls: type[C], path_or_text: str | Path) -> C:
        return cls.from_dict(_read_json(cls, path_or_text))

    def replace(self: C, **changes) -> C:
        return dataclasses.replace(self, **changes)

    def override(self: C, overrides: Mapping[str, Any]) -> C:
        """A copy with `overrides` merged in, all at once (so `__post_init__` sees only the final values).

        Keys are field names or dotted paths into nested configs; a dict given for a nested config changes only
        the fields it names: `{"train.steps": 5}` and `{"train": {"steps": 5}}` are the same override.
        """
        name = type(self).__name__
        return _build(type(self), self, _tree(type(self), overrides, name), name)

    @classmethod
    def preset(cls: type[C], name: str) -> C:
        """A named preset: the class attribute `PRESETS = {"tiny": {...}, ...}` changes only what differs."""
        return cls().override(_preset_overrides(cls, name))


# ----------------------------------------------------------------------------------------------------------------
# overrides: a dict of field names or dotted paths -> a checked tree -> a new config


class _Subtree(dict):
    """Checked overrides of one nested config, keyed by field name (a plain dict is the value of a dict field)."""


def _fields(cls: type[Config]) -> dict[str, Any]:
    """Field name -> resolved type hint, for the fields `__init__` takes."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _config_class(hint) -> type[Config] | None:
    """The config class a field holds (`TrainConfig` or `TrainConfig | None`), else None."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else None
    return hint if isinstance(hint, type) and issubclass(hint, Config) else None


def _type_name(hint) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _coerce(hint, value, where: str):
    """`value` checked against a field's type: JSON lists become tuples and ints floats; other types pass as given."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    elif origin is typing.Literal:
        ok = value in args
    elif origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            try:
                return _coerce(arg, value, where)
            except ConfigError:
                continue
        ok = False
    elif origin is tuple:
        ok = isinstance(value, list | tuple)
        if ok and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if ok and args:
            ok = len(args) == len(value)
            if ok:
                return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
        value = tuple(value) if ok else value
    elif isinstance(hint, type) and issubclass(hint, Config):
        ok = isinstance(value, hint)
    else:
        return value
    if not ok:
        raise ConfigError(f"{where}: expected {_type_name(hint)}, got {value!r}")
    return value


def _tree(cls: type[Config], overrides: Mapping[str, Any], where: str) -> _Subtree:
    """Overrides as a checked tree keyed by field name: dotted keys split, unknown fields an error naming them."""
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"{where}: expected a JSON object, got {type(overrides).__name__}")
    fields = _fields(cls)
    tree, unknown = _Subtree(), []
    for key, value in overrides.items():
        name, _, rest = str(key).partition(".")
        sub = _config_class(fields[name]) if name in fields else None
        if name not in fields or (rest and sub is None):
            unknown.append(key)
            continue
        if rest:
            value = {rest: value}
        if sub is not None and isinstance(value, Mapping):
            value = _tree(sub, value, f"{where}.{name}")
        else:
            value = _coerce(fields[name], value, f"{where}.{name}")
        tree[name] = _merge(tree[name], value) if name in tree else value
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known: {sorted(fields)}")
    return tree


def _merge(old, new):
    """Later overrides win; a nested config's overrides merge field by field, even into a whole config given before."""
    if not isinstance(new, _Subtree):
        return new
    if isinstance(old, Config):
        old = _Subtree({f: getattr(old, f) for f in _fields(type(old))})
    if not isinstance(old, _Subtree):
        return new
    merged = _Subtree(old)
    for name, value in new.items():
        merged[name] = _merge(merged[name], value) if name in merged else value
    return merged


def _field_default(cls: type[Config], name: str):
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    if field.default is not dataclasses.MISSING:
        return field.default
    return None if field.default_factory is dataclasses.MISSING else field.default_factory()


def _build(cls: type[C], base: C | None, tree: _Subtree, where: str) -> C:
    """`base` (or the class defaults) with the checked `tree` applied in one `replace`, nested configs first."""
    kwargs = {}
    for name, value in tree.items():
        if isinstance(value, _Subtree):
            current = getattr(base, name) if base is not None else _field_default(cls, name)
            sub = type(current) if isinstance(current, Config) else _config_class(_fields(cls)[name])
            value = _build(sub, current if isinstance(current, Config) else None, value, f"{where}.{name}")
        kwargs[name] = value
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None


def _read_json(cls: type[Config], path_or_text: str | Path) -> Any:
    """The parsed JSON of a file, or of the text itself when it starts with `{`."""
    text = str(path_or_text)
    if not text.lstrip().startswith("{"):
        text = require_file(path_or_text, "config file", ConfigError).read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{cls.__name__}: config is not valid JSON ({err})") from None


def _preset_overrides(cls: type[Config], name: str) -> Mapping[str, Any]:
    presets = getattr(cls, "PRESETS", {})
    if name not in presets:
        raise ConfigError(f"{cls.__name__}: unknown preset {name!r}; known: {sorted(presets)}")
    return presets[name]


# ----------------------------------------------------------------------------------------------------------------
# the command line: one option per field of the tree


_SIMPLE = (int, float, str, bool)
# where a value counts as given by the user; typer 0.29 vendors click privately (typer._click), so the enum is
# compared by name rather than imported
_EXPLICIT_SOURCES = ("COMMANDLINE", "ENVIRONMENT")


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


def _tuple_items(hint) -> tuple | None:
    """The item types of `tuple[int, ...]` / `tuple[float, float]` of simple types (a comma-separated option)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is not tuple or not args:
        return None
    if len(args) == 2 and args[1] is Ellipsis:
        args = args[:1]
    return args if all(a in (int, float, str) for a in args) else None


def _parse_tuple(text: str, items: tuple, flag: str) -> tuple:
    parts = [p.strip() for p in text.split(",")] if text.strip() else []
    variadic = len(items) == 1
    try:
        kinds = items * len(parts) if variadic else items
        if len(kinds) != len(parts):
            raise ValueError
        return tuple(kind(part) for kind, part in zip(kinds, parts, strict=True))
    except ValueError:
        expected = f"{_type_name(items[0])} values" if variadic else ", ".join(map(_type_name, items))
        raise ConfigError(f"{flag} {text!r}: expected comma-separated {expected}") from None


def _leaves(config: Config, prefix: str = "") -> Iterator[tuple[str, Any, Any, dataclasses.Field]]:
    """(dotted path, type hint, default, field) of every field of the tree below nested configs."""
    fields = _fields(type(config))
    for field in dataclasses.fields(config):
        if not field.init:
            continue
        value = getattr(config, field.name)
        if _config_class(fields[field.name]) is not None and isinstance(value, Config):
            yield from _leaves(value, f"{prefix}{field.name}.")
        else:
            yield prefix + field.name, fields[field.name], value, field


@dataclasses.dataclass
class _Option:
    path: str  # dotted field path: "train.steps"
    param: str  # the command's parameter name: "train__steps"
    flag: str  # "--train.steps"
    items: tuple | None  # item types of a comma-separated tuple option

    def value(self, raw):
        return raw if self.items is None else _parse_tuple(raw, self.items, self.flag)


def config_command(app: typer.Typer, command_name: str, config_cls: type[Config], help: str | None = None, **params):
    """Register `fn(config, **extra)` as a command whose options are the config tree's fields plus `params`.

    Args:
        app: the typer app to add the command to.
        command_name: the command name (so `name` stays free for an option such as the run name).
        config_cls: the config class. Its fields become `--field-name` options; the fields of a nested config
            become dotted options at any depth (`--train.steps`, `--model.d-model`); a bool is switched both ways
            (`--flag/--no-flag`, `--train.amp/--train.no-amp`); a tuple of numbers or strings is comma-separated
            (`--dims 3,4`). Other fields (lists, dicts, optional nested configs) are set with `--config`.
        help: the command's help (default: the function's docstring).
        params: extra options of the command: name -> (annotation, typer.Option/Argument default). A config field
            of the same name is not exposed; `preset` here replaces the generated `--preset`.

    With `PRESETS` on the class the command has `--preset NAME`. Each setting comes from the first of: an option
    given on the command line, the `--config` JSON file, the preset, the defaults. The decorated function receives
    the built config and the extra options as keyword arguments.
    """

    def decorator(fn):
        defaults = config_cls()
        name = config_cls.__name__
        presets = getattr(config_cls, "PRESETS", {})
        offer_preset = bool(presets) and "preset" not in params
        parameters = [inspect.Parameter("_ctx", inspect.Parameter.KEYWORD_ONLY)]
        annotations: dict[str, Any] = {"_ctx": typer.Context}
        for pname, (annotation, default) in params.items():
            parameters.append(inspect.Parameter(pname, inspect.Parameter.KEYWORD_ONLY, default=default))
            annotations[pname] = annotation
        options, file_only = [], []
        for path, hint, default, field in _leaves(defaults):
            head, dot, leaf = path.rpartition(".")
            param = path.replace(".", "__")
            if param in params:
                continue
            flag = "--" + path.replace("_", "-")
            items = _tuple_items(hint)
            annotation = typing.Optional[str] if items else _option_type(hint)  # noqa: UP045
            if annotation is None:
                file_only.append(path)
                continue
            extra = {}
            if items:
                metavar = f"{_type_name(items[0])},..." if len(items) == 1 else ",".join(map(_type_name, items))
                extra = {"show_default": ",".join(map(str, default)), "metavar": metavar.upper()}
                default = None
            elif annotation is bool:  # both ways, so a field that defaults to True can be switched off
                flag = f"{flag}/--{head.replace('_', '-')}{dot}no-{leaf.replace('_', '-')}"
            option = typer.Option(default, flag, help=field.metadata.get("help"),
                                  rich_help_panel=f"Config: {head}" if head else "Config", **extra)
            parameters.append(inspect.Parameter(param, inspect.Parameter.KEYWORD_ONLY, default=option))
            annotations[param] = annotation
            options.append(_Option(path, param, flag.partition("/")[0], items))
        if offer_preset:
            option = typer.Option(None, "--preset", help=f"Named preset ({' | '.join(presets)}): changes only what "
                                  "differs from the defaults; --config and options override it.")
            parameters.append(inspect.Parameter("preset", inspect.Parameter.KEYWORD_ONLY, default=option))
            annotations["preset"] = typing.Optional[str]  # noqa: UP045
        only_here = f" Only here: {', '.join(file_only)}." if file_only else ""
        option = typer.Option(None, "--config", help="JSON config; nested objects merge field by field; options "
                              f"given on the command line override it.{only_here}")
        parameters.append(inspect.Parameter("config_file", inspect.Parameter.KEYWORD_ONLY, default=option))
        annotations["config_file"] = typing.Optional[Path]  # noqa: UP045

        @functools.wraps(fn)
        def command(**kwargs):
            ctx = kwargs.pop("_ctx")
            layers = []  # lowest precedence first
            preset = kwargs.pop("preset") if offer_preset else None
            if preset is not None:
                layers.append(_preset_overrides(config_cls, preset))
            config_file = kwargs.pop("config_file")
            if config_file is not None:
                layers.append(_read_json(config_cls, config_file))
            given = {}
            for option in options:
                raw = kwargs.pop(option.param)
                source = ctx.get_parameter_source(option.param)
                if source is not None and source.name in _EXPLICIT_SOURCES:
                    given[option.path] = option.value(raw)
            layers.append(given)
            tree = _Subtree()
            for layer in layers:
                tree = _merge(tree, _tree(config_cls, layer, name))
            return fn(_build(config_cls, defaults, tree, name), **kwargs)

        command.__signature__ = inspect.Signature(parameters)
        command.__annotations__ = annotations
        del command.__wrapped__
        app.command(command_name, help=help or fn.__doc__)(command)
        return fn

    return decorator

"""Typed option blocks: a yaml mapping read into a dataclass, every key known and every value of its declared type.

``build_dataclass(cls, options, where)`` refuses an unknown key (naming the closest known one) and a value of the
wrong type (a string where a bool or a number goes, a float where an int goes), naming the full key, so that a typo
or a quoted ``"false"`` fails when the config is read instead of deep inside a run.  Nested dataclass fields are
built from nested mappings the same way.
"""
import dataclasses
import difflib
import typing
from typing import Any, Mapping, Optional

# What a user sees for a declared type
TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


class ConfigError(ValueError):
    """A config that cannot run; entry points print the message alone (one line, no traceback) and exit non-zero."""


def closest(name: str, known) -> str:
    """``" (did you mean 'x'?)"`` for the known name closest to ``name``, or nothing."""
    match = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


LISTED_KNOWN = 30  # a block with more known keys names only the closest one


def unknown_keys_error(where: str, unknown, known, cls=None) -> ConfigError:
    hints = "; ".join(f"{where}.{name}{closest(name, known)}" for name in sorted(unknown))
    listing = (f"known in {where}: {', '.join(sorted(known))}" if len(known) <= LISTED_KNOWN or cls is None else
               f"the {len(known)} known keys of {where} are the fields of {cls.__module__}.{cls.__qualname__}")
    return ConfigError(f"unknown option(s) {hints}; {listing}")


def check_ranges(block, shares=(), probabilities=(), positive=(), non_negative=()) -> None:
    """ValueError naming every field of the dataclass ``block`` out of its range: ``shares`` (of patches or words
    masked) in [0, 1), ``probabilities`` in (0, 1], ``positive`` (temperatures) above 0, ``non_negative`` (weights)
    at least 0."""
    wrong = [f"{name} must be in [0, 1), got {getattr(block, name)}" for name in shares
             if not 0.0 <= getattr(block, name) < 1.0]
    wrong += [f"{name} must be in (0, 1], got {getattr(block, name)}" for name in probabilities
              if not 0.0 < getattr(block, name) <= 1.0]
    wrong += [f"{name} must be > 0, got {getattr(block, name)}" for name in positive if not getattr(block, name) > 0]
    wrong += [f"{name} must be >= 0, got {getattr(block, name)}" for name in non_negative
              if not getattr(block, name) >= 0]
    if wrong:
        raise ValueError("; ".join(wrong))


def describe(annotation) -> str:
    """A declared type in words: ``int`` → "an integer", ``Optional[float]`` → "a number or null"."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation in TYPE_WORDS:
        return TYPE_WORDS[annotation]
    if origin is typing.Union:
        return " or ".join("null" if arg is type(None) else describe(arg) for arg in args)
    if origin in (list, tuple) or annotation in (list, tuple):
        return f"a list of {describe(args[0])}" if args else "a list"
    if origin in (dict, Mapping) or annotation is dict or dataclasses.is_dataclass(annotation):
        return "a mapping"
    if origin is typing.Literal:
        return " or ".join(repr(arg) for arg in args)
    return getattr(annotation, "__name__", str(annotation))


def check_value(value, annotation, key: str):
    """``value`` as the declared ``annotation`` (ints become floats where a float goes); :class:`ConfigError` naming
    ``key`` when it is not of that type."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any or annotation is object:
        return value
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        present = [arg for arg in args if arg is not type(None)]
        if len(present) == 1 and (dataclasses.is_dataclass(present[0]) or typing.get_origin(present[0])):
            return check_value(value, present[0], key)  # a block's or container's own error names the nested key
        for arg in present:
            try:
                return check_value(value, arg, key)
            except ConfigError:
                continue
        raise type_error(value, annotation, key)
    if origin is typing.Literal:
        if value not in args:
            raise type_error(value, annotation, key)
        return value
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, Mapping):
            raise type_error(value, annotation, key)
        return build_dataclass(annotation, value, key)
    if origin in (list, tuple) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise type_error(value, annotation, key)
        return [check_value(item, args[0], f"{key}[{index}]") if args else item for index, item in enumerate(value)]
    if origin in (dict, Mapping) or annotation is dict:
        if not isinstance(value, Mapping):
            raise type_error(value, annotation, key)
        key_type, value_type = args or (Any, Any)
        return {check_value(k, key_type, key): check_value(v, value_type, f"{key}.{k}") for k, v in value.items()}
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise type_error(value, annotation, key)
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise type_error(value, annotation, key)
        return value
    if annotation in (bool, str):
        if not isinstance(value, annotation):
            raise type_error(value, annotation, key)
        return value
    raise TypeError(f"{key}: no check for the declared type {annotation!r}")


def type_error(value, annotation, key: str) -> ConfigError:
    return ConfigError(f"{key} must be {describe(annotation)}, got {value!r} ({type(value).__name__})")


def build_dataclass(cls, options: Optional[Mapping], where: str):
    """``cls(**options)`` with every key known and every value of its field's declared type; ``where`` is the dotted
    path of the block (``model``, ``model.vision``, ``run``) used in errors.  ``ValueError``s of the dataclass's own
    range checks come back as :class:`ConfigError` naming ``where``."""
    options = dict(options or {})
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = set(options) - set(fields)
    if unknown:
        raise unknown_keys_error(where, unknown, fields, cls)
    hints = typing.get_type_hints(cls)
    typed = {name: check_value(value, hints[name], f"{where}.{name}") for name, value in options.items()}
    missing = [name for name, f in fields.items()
               if name not in typed and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where} needs {', '.join(f'{where}.{name}' for name in missing)}")
    try:
        return cls(**typed)
    except ConfigError:
        raise
    except ValueError as error:
        raise ConfigError(f"{where}: {error}") from None

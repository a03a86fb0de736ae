"""Helpers shared by the matching parts: name → callable look-up and option checks."""
import functools
import inspect
from typing import Callable, Dict


def build_from(registry: Dict[str, Callable], kind: str, name: str, options: dict) -> Callable:
    """``registry[name]`` with ``options`` bound as keyword arguments.

    Raises ``ValueError`` (listing the known names) for an unknown ``name``, and ``TypeError`` for an
    option the callable does not take, so that a config typo fails when the part is built rather than at
    its first call.
    """
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; known names: {', '.join(sorted(registry))}")
    function = registry[name]
    inspect.signature(function).bind_partial(**options)
    return functools.partial(function, **options)


def check_choice(option: str, value, choices) -> None:
    """Raise ``ValueError`` naming ``option`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{option} must be one of {', '.join(map(repr, choices))}, got {value!r}")

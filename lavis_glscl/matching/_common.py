"""Helpers shared by the matching parts."""


def check_choice(option: str, value, choices) -> None:
    """Raise ``ValueError`` naming ``option`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{option} must be one of {', '.join(map(repr, choices))}, got {value!r}")

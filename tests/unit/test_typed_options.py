"""Typed option blocks refuse wrong types naming the key, and convert integers where numbers go."""
from typing import Dict, List, Optional

import pytest
from omegaconf import OmegaConf

from lavis_glscl.typed_options import ConfigError, build_dataclass


def typed_blocks():
    from dataclasses import dataclass, field

    @dataclass
    class Inner:
        size: int
        rate: float = 0.5

    @dataclass
    class Outer:
        inner: Inner
        flag: bool = False
        name: Optional[str] = None
        weights: Dict[str, float] = field(default_factory=dict)
        names: List[str] = field(default_factory=list)

    return Outer, Inner


@pytest.mark.parametrize("options, message", [
    ({"inner": {"size": 2}, "flag": "false"}, "block.flag must be true or false, got 'false' (str)"),
    ({"inner": {"size": 2.5}}, "block.inner.size must be an integer, got 2.5 (float)"),
    ({"inner": {"size": True}}, "block.inner.size must be an integer, got True (bool)"),
    ({"inner": {"size": 2, "rate": "fast"}}, "block.inner.rate must be a number, got 'fast' (str)"),
    ({"inner": {"size": 2}, "weights": {"itc": "high"}}, "block.weights.itc must be a number"),
    ({"inner": {"size": 2}, "names": "a,b"}, "block.names must be a list of a string"),
    ({"inner": {"size": 2}, "name": 3}, "block.name must be a string or null, got 3 (int)"),
    ({"inner": {"size": 2}, "flga": True}, "unknown option(s) block.flga (did you mean 'flag'?)"),
    ({"inner": {"sise": 2}}, "unknown option(s) block.inner.sise (did you mean 'size'?)"),
    ({"flag": True}, "block needs block.inner"),
])
def test_typed_blocks_refuse_wrong_types_naming_the_key(options, message):
    outer, _ = typed_blocks()
    with pytest.raises(ConfigError) as refusal:
        build_dataclass(outer, options, "block")
    assert message in str(refusal.value)


def test_typed_blocks_convert_integers_where_numbers_go_and_build_nested_blocks():
    outer, inner = typed_blocks()
    built = build_dataclass(outer, OmegaConf.to_container(OmegaConf.create(
        {"inner": {"size": 3, "rate": 1}, "weights": {"itc": 1}, "names": ["a"]})), "block")
    assert built.inner == inner(size=3, rate=1.0) and isinstance(built.inner.rate, float)
    assert built.weights == {"itc": 1.0} and isinstance(built.weights["itc"], float) and built.names == ["a"]

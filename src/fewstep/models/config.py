"""Frozen dataclass configs for the networks, convertible to and from plain (JSON-able) dicts."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

__all__ = ["ModelConfig"]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Base of UNetConfig / DiTConfig / MLPConfig.

    `to_dict()` gives {"arch": ..., field: value} with tuples as lists (JSON-ready); `from_dict`
    inverts it; `replace(**overrides)` checks the names. Lists given for tuple fields become tuples.
    """

    ARCH: ClassVar[str] = ""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(f.default, tuple) and isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
        self.validate()

    def validate(self) -> None:
        """Raise ValueError on an inconsistent config (subclasses extend this)."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def _check_names(cls, names) -> None:
        valid = cls.field_names()
        unknown = [n for n in names if n not in valid]
        if unknown:
            raise ValueError(f"unknown {cls.ARCH} config option(s) {', '.join(map(repr, unknown))}; "
                             f"valid: {', '.join(valid)}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"arch": self.ARCH}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        d = dict(d)
        arch = d.pop("arch", cls.ARCH)
        if arch != cls.ARCH:
            raise ValueError(f"config is for arch {arch!r}, not {cls.ARCH!r}")
        cls._check_names(d)
        return cls(**d)

    def replace(self, **overrides):
        self._check_names(overrides)
        return dataclasses.replace(self, **overrides)

    def build(self):
        """Construct the network this config describes."""
        raise NotImplementedError

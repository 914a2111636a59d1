"""Small helpers shared by the training modules."""

from __future__ import annotations

import inspect


def valid_kwargs(cls, skip=()) -> list[str]:
    """Names of the keyword options of cls.__init__ (minus `skip`)."""
    params = inspect.signature(cls.__init__).parameters
    return [n for n, p in params.items() if n != "self" and n not in skip
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def check_kwargs(cls, kwargs: dict, what: str, skip=()) -> None:
    """ValueError naming the unknown options of `what` and the valid ones."""
    valid = valid_kwargs(cls, skip)
    unknown = [k for k in kwargs if k not in valid]
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} for {what}; "
                         f"valid: {', '.join(valid) or '(none)'}")

"""``adding(Cls, doc)``: a method that builds ``Cls(...)`` and registers it.

The facades (``leza.notify.webhook(...)``, ``leza.availability.http(...)``)
take exactly their class's arguments. Written out, each facade method repeats
its class's signature and has to be kept in step with it by hand; made here,
it *is* the class's signature, for callers, for mypy and for ``help()``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

__all__ = ["adding"]

P = ParamSpec("P")
T = TypeVar("T")


def adding(cls: Callable[P, T], doc: str) -> Callable[Concatenate[Any, P], T]:
    """A method for a class with ``add(thing) -> thing``: ``self.add(cls(...))``."""

    def method(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> T:
        made: T = self.add(cls(*args, **kwargs))
        return made

    method.__doc__ = doc
    signature = inspect.signature(cls)
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
    method.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[self_param, *signature.parameters.values()], return_annotation=cls
    )
    return method

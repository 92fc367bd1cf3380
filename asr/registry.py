"""Name -> component registries, so configs choose components by name."""
from __future__ import annotations

from typing import Callable, Dict, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A small mapping from config names to classes or functions.

    >>> ENCODERS = Registry("encoder")
    >>> @ENCODERS.register("conv_rnn")
    ... class ConvRNN: ...
    >>> ENCODERS.get("conv_rnn") is ConvRNN
    True
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: Dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def wrap(obj: T) -> T:
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return wrap

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise KeyError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items


ENCODERS: Registry = Registry("encoder")
HEADS: Registry = Registry("head")
SEARCHES: Registry = Registry("search")
RNNT_LOSSES: Registry = Registry("rnnt loss backend")

"""Name -> factory registries (models, datasets, regimes, detectors).

Register with an explicit name by decorator; a duplicate name raises; an unknown name
raises :class:`~ncood.errors.ConfigError` listing what exists and the closest match.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ncood.errors import ConfigError

T = TypeVar("T")


def closest(name: str, options: list[str] | tuple[str, ...]) -> str:
    """Return a `` (did you mean 'x'?)`` suffix for ``name``, or '' if nothing is close."""
    match = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


class Registry(Generic[T]):
    """A registry of one kind of object.

    Args:
        kind: what is registered ("model", "dataset", ...), used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; duplicate names raise."""

        def decorator(obj: T) -> T:
            if name in self._items:
                raise ConfigError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """Return the object registered as ``name``; unknown names list the valid ones."""
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}{closest(name, self.names())}; "
                f"choose one of: {', '.join(self.names())}"
            ) from None

    def create(self, name: str, /, **kwargs: Any) -> Any:
        """Call the factory registered as ``name`` with keyword arguments."""
        return self.get(name)(**kwargs)  # type: ignore[operator]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

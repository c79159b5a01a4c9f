"""Named registries (models, datasets, pruning strategies, controls, presets, kinds of experiment).

One registration style for all of them: `REGISTRY.add(name, description, target, **metadata)`.
An entry's name, description and metadata are known at once; its code, given as a
"package.module:attribute" string, is imported the first time `get` asks for it. So listing a
registry, checking a config's names or counting a sweep's iterations never imports torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Generic, Iterator, TypeVar

from trainables.config import UserError, did_you_mean

T = TypeVar("T")


@dataclass
class Entry(Generic[T]):
    name: str
    description: str  # one line, with its source (a paper) where it has one
    target: Any  # the object, or "package.module:attribute" to import on first use
    metadata: dict[str, Any] = field(default_factory=dict)

    def load(self) -> T:
        if isinstance(self.target, str):
            module, _, attribute = self.target.partition(":")
            self.target = getattr(importlib.import_module(module), attribute)
        return self.target


class UnknownNameError(KeyError, UserError):
    """A name that is not in a registry; the message lists what is."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str, list_command: str):
        self.kind = kind  # what an entry is, in messages: "architecture", "dataset", ...
        self.list_command = list_command
        self._entries: dict[str, Entry[T]] = {}

    def add(self, name: str, description: str, target: Any, **metadata: Any) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = Entry(name, description, target, metadata)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())

    def names(self) -> list[str]:
        return list(self._entries)

    def unknown_message(self, name: str) -> str:
        return (f"unknown {self.kind} {name!r}{did_you_mean(name, self.names())}; known: {', '.join(self.names())}. "
                f"`{self.list_command}` describes them")

    def entry(self, name: str) -> Entry[T]:
        if name not in self._entries:
            raise UnknownNameError(self.unknown_message(name))
        return self._entries[name]

    def get(self, name: str) -> T:
        """The entry's code, imported on first use."""
        return self.entry(name).load()

    def meta(self, name: str) -> dict[str, Any]:
        return self.entry(name).metadata

"""String choices as ``str`` Enums: typed in Python, plain words in YAML, JSON and messages."""

from __future__ import annotations

from enum import Enum
from typing import Any, TypeVar

__all__ = ["Choice"]

_C = TypeVar("_C", bound="Choice")


class Choice(str, Enum):
    """A setting with a fixed set of words; a member equals (and prints as) its word.

    Example:
        >>> class Colour(Choice):
        ...     RED = "red"
        >>> Colour.parse("red", "colour") == "red", f"{Colour.RED}"
        (True, 'red')
    """

    def __str__(self) -> str:
        return str(self.value)

    def __hash__(self) -> int:
        # Hash as the word, so that a member and its word are the same dict key.
        return hash(self.value)

    @classmethod
    def parse(cls: type[_C], value: Any, setting: str) -> _C:
        """The member spelled ``value``.

        Raises:
            ValueError: Naming ``setting`` and the words it accepts.
        """
        try:
            return cls(value)
        except ValueError:
            words = ", ".join(member.value for member in cls)
            raise ValueError(f"{setting} must be one of {words}, got {value!r}") from None

    @classmethod
    def words(cls) -> tuple[str, ...]:
        """Every accepted word, in definition order."""
        return tuple(member.value for member in cls)

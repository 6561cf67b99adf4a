"""The one error of the data layer: a dataset that cannot be loaded as configured."""

from __future__ import annotations


class DataError(ValueError):
    """A dataset cannot be loaded as configured: the message says what, where and what is valid."""

    @property
    def key(self) -> str:
        """The dotted config key the message starts with (``data.root: ...``), else ``data``."""
        head, sep, _ = str(self).partition(": ")
        return head if sep and head.startswith("data.") and " " not in head else "data"

"""Named components of an ablation axis, and the door for a user's own: ``module.path:factory``.

Every axis a sweep compares (augmentation ops, losses, encoders, data sources, searchers and
schedulers, report figures and findings) keeps its components in one :class:`Registry`, in the
module of that axis. A spec names a built-in component by its registered name (``color``,
``nt_xent``, ``resnet18``) or a user's own by import path, ``module.path:factory``, the
convention of setuptools entry points and ``uvicorn app:app``: the module is imported (from the
driver's working directory, which Ray ships to every worker as part of the job's runtime
environment) and ``factory`` is looked up in it.

Names are checked when the spec is validated, before anything runs: an unknown name raises
:class:`UnknownComponentError`, a ``ValueError`` whose message says the axis, the name, the
closest registered name (did-you-mean, ``difflib``) and the valid names; a plugin that does not
import, or lacks its attribute, raises :class:`PluginImportError` naming the module and the
cause. Registries are filled at import time of their axis module, so a lookup never depends on
call order; a plugin is imported once per process (``importlib`` caches modules).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")

#: ``package.module:attribute`` (dotted identifiers on both sides of one colon).
_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
PLUGIN_PATTERN = re.compile(rf"^{_DOTTED}:{_DOTTED}$")


def is_plugin_name(name: object) -> bool:
    """True when ``name`` is spelled ``module.path:factory`` (a user's component)."""
    return isinstance(name, str) and PLUGIN_PATTERN.match(name) is not None


class UnknownComponentError(ValueError):
    """A name that no registry entry and no plugin path matches; the message names the axis,
    the closest valid name and every valid one."""


class PluginImportError(ValueError):
    """A ``module.path:factory`` name whose module does not import or lacks ``factory``."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered component.

    ``name``: how a spec names it; ``component``: the registered object (a factory function, a
    class); ``description``: one line for the schema's docs and error messages (default: the
    first line of the component's docstring); ``meta``: axis-specific facts (e.g. an op's
    parameter model, an encoder's input needs); ``plugin``: True for ``module.path:factory``.
    """

    name: str
    component: T
    description: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    plugin: bool = False


def raised(kind: str, name: str, error: BaseException) -> str:
    """``figure `a.b:f` raised ValueError: message`` (the message's first line): a user's
    component of ``kind`` named ``name`` that raised ``error`` when it ran."""
    text = str(error).strip()
    message = f": {text.splitlines()[0]}" if text else ""
    return f"{kind} `{name}` raised {type(error).__name__}{message}"


def _first_line(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def import_plugin(path: str) -> Any:
    """Import ``module.path:attr`` and return the attribute (dotted ``attr`` walks attributes).

    Raises :class:`PluginImportError` naming the module and the cause when the module does not
    import (including errors raised inside it) or the attribute is missing.
    """
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # any failure inside the user's module
        where = (
            ""
            if module_name.split(".")[0] in sys.modules
            else (
                " (it must be importable from the directory the sweep is launched in, or installed)"
            )
        )
        raise PluginImportError(
            f"{path}: cannot import module {module_name!r}{where}: {type(error).__name__}: {error}"
        ) from error
    value: Any = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            available = sorted(n for n in dir(module) if not n.startswith("_"))
            hint = difflib.get_close_matches(part, available, n=1)
            did = f"; did you mean {module_name}:{hint[0]}?" if hint else ""
            raise PluginImportError(
                f"{path}: module {module_name!r} ({getattr(module, '__file__', '?')}) has no "
                f"attribute {attribute!r}{did}"
            )
        value = getattr(value, part)
    return value


class Registry(Generic[T]):
    """The components of one axis, by name, plus user plugins named ``module.path:factory``.

    ``axis``: what a component is, in words (``"augmentation op"``); ``key``: the spec key that
    names one (``"augment.ops"``), used in error messages; ``check``: optional callable run on a
    plugin's resolved object that raises ``TypeError``/``ValueError`` when it does not fit the
    axis (e.g. not callable, an encoder without ``feat_dim``); ``plugins``: whether the axis
    accepts ``module.path:factory`` names.
    """

    def __init__(
        self,
        axis: str,
        key: str,
        *,
        check: Callable[[str, Any], Entry[T]] | None = None,
        plugins: bool = True,
    ) -> None:
        self.axis = axis
        self.key = key
        self._check = check
        self.plugins = plugins
        self._entries: dict[str, Entry[T]] = {}
        self._plugin_cache: dict[str, Entry[T]] = {}

    # ------------------------------------------------------------------ registration

    def add(self, name: str, component: T, description: str | None = None, **meta: Any) -> T:
        """Register ``component`` as ``name``; returns the component. A name registered twice
        raises ``ValueError`` (two components must not answer to one name)."""
        if not name or ":" in name:
            raise ValueError(f"{self.axis} name {name!r}: must be non-empty and without ':'")
        if name in self._entries:
            raise ValueError(f"{self.axis} {name!r} is registered twice")
        text = _first_line(component) if description is None else description
        self._entries[name] = Entry(name, component, text, dict(meta))
        return component

    def register(self, name: str, description: str | None = None, **meta: Any) -> Callable[[T], T]:
        """Decorator form of :meth:`add`: ``@OPS.register("color", params=ColorParams)``."""

        def decorate(component: T) -> T:
            return self.add(name, component, description, **meta)

        return decorate

    # ------------------------------------------------------------------ lookup

    def names(self) -> tuple[str, ...]:
        """Registered (built-in) names, in registration order."""
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries or (self.plugins and is_plugin_name(name))

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def valid_text(self) -> str:
        """The valid names in words, for docs and errors: ``a, b, c, or module.path:factory``."""
        names = ", ".join(self._entries)
        return f"{names}, or a plugin as module.path:factory" if self.plugins else names

    def unknown(self, name: object) -> UnknownComponentError:
        """The error for an unknown ``name``: axis, closest name, valid names."""
        hint = difflib.get_close_matches(str(name), list(self._entries), n=1)
        did = f"; did you mean {hint[0]!r}?" if hint else ""
        return UnknownComponentError(
            f"unknown {self.axis} {name!r}{did} Valid: {self.valid_text()}"
        )

    def get(self, name: str) -> Entry[T]:
        """The entry of ``name``: a registered one, or a plugin imported from its path.

        Raises :class:`UnknownComponentError` for an unknown name, :class:`PluginImportError`
        for a plugin that does not import, and whatever ``check`` raises (``TypeError`` /
        ``ValueError``) for a plugin that does not fit the axis.
        """
        entry = self._entries.get(name)
        if entry is not None:
            return entry
        if not (self.plugins and is_plugin_name(name)):
            raise self.unknown(name)
        cached = self._plugin_cache.get(name)
        if cached is not None:
            return cached
        component = import_plugin(name)
        if self._check is not None:
            entry = self._check(name, component)
        else:
            entry = Entry(name, component, _first_line(component), {}, plugin=True)
        self._plugin_cache[name] = entry
        return entry

    def validate(self, name: object) -> str:
        """``name`` when it is registered or a plugin that imports and fits; otherwise raises
        as :meth:`get` does. For pydantic ``field_validator`` bodies."""
        if not isinstance(name, str):
            raise self.unknown(name)
        self.get(name)
        return name

    def describe(self) -> str:
        """Markdown list of the registered names with their descriptions, for generated docs."""
        lines = [f"- `{e.name}`" + (f": {e.description}" if e.description else "") for e in self]
        if self.plugins:
            lines.append(
                f"- `module.path:factory`: your own {self.axis}, importable where the sweep runs"
            )
        return "\n".join(lines)

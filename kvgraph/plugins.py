"""Plugins: how a model family adds named specs and ``kvgraph`` subcommands without the core
importing it.

A plugin is a function ``register(registry: Registry) -> None`` that calls
:meth:`Registry.add_spec` and/or :meth:`Registry.add_command`. A distribution declares its
plugins as entry points of the group ``kvgraph.plugins`` (``models`` declares its Whisper
plugin in pyproject.toml)::

    [project.entry-points."kvgraph.plugins"]
    whisper = "models.whisper.plugin:register"

The default :data:`REGISTRY` discovers the installed plugins
(``importlib.metadata.entry_points(group="kvgraph.plugins")``) on its first query, never at
import. :func:`use` applies a plugin explicitly (tests, scripts, a family that is not an
installed distribution). Each plugin is applied at most once per registry, and either all of
what it registers is kept or none of it (it raised). A discovered plugin that fails to load or
to register is reported as a warning and skipped, so one broken plugin does not take the
others (or ``kvgraph show llama-demo``) down with it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:
    from .spec import DecoderSpec

GROUP = "kvgraph.plugins"
CORE = "kvgraph"  # the owner named for the core's own specs
CORE_COMMANDS = ("show", "list")  # the core CLI's subcommands; plugins cannot take them

Plugin = Callable[["Registry"], None]


@dataclass(frozen=True)
class SpecEntry:
    """A named spec: ``make()`` builds it (called once, on first use); ``owner`` names the
    plugin that registered it (``"kvgraph"`` for the core's own)."""

    name: str
    make: Callable[[], DecoderSpec]
    owner: str


@dataclass(frozen=True)
class Command:
    """A ``kvgraph NAME ...`` subcommand: ``run(argv)`` gets the arguments after ``NAME``
    untouched and returns the exit status (``None`` counts as 0)."""

    name: str
    run: Callable[[list[str]], int | None]
    help: str
    owner: str


def _label(plugin) -> str:
    return f"{getattr(plugin, '__module__', '?')}:{getattr(plugin, '__qualname__', repr(plugin))}"


class Registry:
    """Named specs and subcommands contributed by the core and by plugins.

    ``discover=True`` applies the installed ``kvgraph.plugins`` entry points on the first
    query (:meth:`specs`, :meth:`commands`); ``False`` keeps the registry to what is applied
    explicitly (tests).
    """

    def __init__(self, *, discover: bool = True, core: Sequence[Plugin] = ()):
        self._specs: dict[str, SpecEntry] = {}
        self._commands: dict[str, Command] = {}
        self._applied: list = []  # plugin functions, by identity
        self._owner: str | None = None  # the plugin being applied
        self._discover = discover
        self._discovered = False
        self._core = list(core)

    # ------------------------------------------------------------------ what plugins call

    def add_spec(self, name: str, make: Callable[[], DecoderSpec]) -> None:
        """Register the spec ``name``, built by ``make()`` on first use (so registering it
        imports nothing heavy). ValueError if ``name`` is taken."""
        owner = self._owner or "<direct>"
        if name in self._specs:
            raise InputError(f"spec {name!r} from {owner} is already registered by {self._specs[name].owner}")
        self._specs[name] = SpecEntry(name, make, owner)

    def add_command(self, name: str, run: Callable[[list[str]], int | None], help: str = "") -> None:
        """Register ``kvgraph NAME ...``: ``run`` gets the arguments after ``NAME`` untouched.
        ValueError if ``name`` is a core command or taken."""
        owner = self._owner or "<direct>"
        if name in CORE_COMMANDS or name.startswith("-"):
            raise InputError(f"command {name!r} from {owner}: the name is reserved by kvgraph")
        if name in self._commands:
            raise InputError(
                f"command {name!r} from {owner} is already registered by {self._commands[name].owner}"
            )
        self._commands[name] = Command(name, run, help, owner)

    # ------------------------------------------------------------------ applying plugins

    def use(self, plugin: Plugin, *, owner: str | None = None) -> None:
        """Apply ``plugin`` (once: a second call with the same function does nothing). If it
        raises, nothing it registered is kept and the error propagates."""
        if any(p is plugin for p in self._applied):
            return
        specs, commands = dict(self._specs), dict(self._commands)
        self._owner = owner or _label(plugin)
        try:
            plugin(self)
        except BaseException:
            self._specs, self._commands = specs, commands
            raise
        finally:
            self._owner = None
        self._applied.append(plugin)

    def discover(self) -> None:
        """Apply the core's own registrations, then every installed ``kvgraph.plugins`` entry
        point (once; later calls do nothing)."""
        if self._discovered:
            return
        self._discovered = True
        for core in self._core:
            self.use(core, owner=CORE)
        if not self._discover:
            return
        from importlib.metadata import entry_points

        for ep in entry_points(group=GROUP):
            where = f"{ep.name} = {ep.value}"
            try:
                self.use(ep.load(), owner=where)
            except Exception as e:  # noqa: BLE001 - one broken plugin must not break the rest
                warnings.warn(
                    f"kvgraph: skipped the plugin {where!r} (entry point group {GROUP!r}): "
                    f"{type(e).__name__}: {e}",
                    RuntimeWarning,
                    stacklevel=2,
                )

    # ------------------------------------------------------------------ queries

    def specs(self) -> dict[str, SpecEntry]:
        """Every registered spec by name: the plugins' (in the order they were applied), then
        the core's own."""
        self.discover()
        return dict(sorted(self._specs.items(), key=lambda kv: kv[1].owner == CORE))

    def commands(self) -> dict[str, Command]:
        """Every plugin subcommand by name, in the order registered."""
        self.discover()
        return dict(self._commands)


def _core_specs(registry: Registry) -> None:
    from .core_specs import register_core

    register_core(registry)


REGISTRY = Registry(core=[_core_specs])
"""The registry behind :mod:`kvgraph.specs` and the ``kvgraph`` command line."""


def use(plugin: Plugin) -> None:
    """Apply ``plugin`` to :data:`REGISTRY` (see :meth:`Registry.use`)."""
    REGISTRY.use(plugin)

"""A start-up that overlaps its imports: openai-whisper's decoding (torch) imported in a thread
while the MAX programs load, and numba imported only once word timestamps need it."""

from __future__ import annotations

import contextlib
import types


def defer_numba() -> None:
    """Import numba on first use instead of with openai-whisper (0.1-0.2 s of the start-up:
    numba and llvmlite). openai-whisper imports numba only to ``numba.jit`` its word-timestamp
    DTW at import time; until then ``numba`` is a stand-in module whose ``jit`` returns a
    wrapper that compiles with the real numba on the first call (as numba itself compiles
    lazily), and any other attribute access (a submodule import reads ``__path__``) imports
    the real numba and hands over to it. Used by kvgraph's command line, whose process it
    owns; a library caller keeps the plain import."""
    import sys

    if "numba" in sys.modules:
        return
    sys.modules["numba"] = _NumbaStandIn("numba")


def _real_numba():
    import importlib
    import sys

    if isinstance(sys.modules.get("numba"), _NumbaStandIn):
        del sys.modules["numba"]
    return importlib.import_module("numba")


class _NumbaStandIn(types.ModuleType):
    """``numba`` until it is used (see :func:`defer_numba`)."""

    def __init__(self, name):
        super().__init__(name)
        self._pending = []  # (fn, jit args, jit kwargs) not compiled yet

    def jit(self, *args, **kwargs):
        if args and callable(args[0]) and not kwargs:  # bare @numba.jit
            return _real_numba().jit(*args)

        def decorate(fn):
            import functools

            @functools.wraps(fn)
            def call(*a, **k):
                return self._compile_all()[fn](*a, **k)

            self._pending.append((fn, args, kwargs))
            return call

        return decorate

    def _compile_all(self) -> dict:
        """jit every deferred function with the real numba and rebind the module globals
        that named the stand-in wrappers (a jitted function calls its jitted neighbours)."""
        if not hasattr(self, "_compiled"):
            numba = _real_numba()
            self._compiled = {}
            for fn, args, kwargs in self._pending:
                self._compiled[fn] = numba.jit(*args, **kwargs)(fn)
            for fn, jitted in self._compiled.items():
                g = fn.__globals__
                if getattr(g.get(fn.__name__), "__wrapped__", None) is fn:
                    g[fn.__name__] = jitted
        return self._compiled


#: Standard-library modules both the MAX path and openai-whisper's import: imported before
#: the background import starts, so the two threads never wait on each other's module locks.
_SHARED_IMPORTS = (
    "asyncio",
    "concurrent.futures",
    "csv",
    "dataclasses",
    "email.utils",
    "importlib.metadata",
    "importlib.resources",
    "json",
    "logging",
    "socket",
    "ssl",
    "subprocess",
    "typing_extensions",
    "uuid",
    "zipfile",
)


class BackgroundImport:
    """Import ``module`` in a daemon thread; :meth:`join` waits for it and re-raises its error
    (importing again in the calling thread, so the error is the one a plain import raises)."""

    def __init__(self, module: str):
        import importlib
        import threading

        for name in _SHARED_IMPORTS:
            with contextlib.suppress(ImportError):
                importlib.import_module(name)
        self.module, self.error = module, None
        self.thread = threading.Thread(target=self._run, name="kvgraph-import", daemon=True)
        self.thread.start()

    def _run(self):
        import importlib

        try:
            importlib.import_module(self.module)
        except BaseException as e:  # noqa: BLE001 - re-raised by join()
            self.error = e

    def join(self):
        import importlib

        self.thread.join()
        if self.error is not None:
            importlib.import_module(self.module)  # raises as a plain import would

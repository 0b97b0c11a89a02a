"""Every error kvgraph raises on purpose derives from :class:`KvgraphError`.

Errors about a caller's arguments also derive from the built-in a caller would catch
(``ValueError`` or ``TypeError``), so ``except ValueError`` keeps working.
``tests/test_errors.py`` checks that no module of kvgraph raises a bare ``ValueError`` or
``TypeError``.
"""


class KvgraphError(Exception):
    """Base class of kvgraph's own errors."""


class SpecError(KvgraphError, ValueError):
    """An invalid decoder spec; the message names the field and the value at fault."""

    def __init__(self, field: str, value, why: str):
        self.field, self.value, self.why = field, value, why
        super().__init__(f"{field}={value!r}: {why}")


class InputError(KvgraphError, ValueError):
    """An argument or input with a valid type but an invalid value: token ids out of range,
    a sequence longer than the model or cache holds, an unknown option, a bound missing."""


class InputTypeError(KvgraphError, TypeError):
    """An argument of the wrong type (e.g. ``build`` given something not a ``DecoderSpec``)."""


class IRTypeError(KvgraphError, TypeError):
    """An op's operands break its type rule (raised by ``infer_type``)."""


class VerifyError(KvgraphError):
    """A graph breaks an IR invariant; the message shows the offending node in context."""


class PassError(KvgraphError):
    """A pass cannot rewrite a graph; the message names the node that breaks it."""


class ReferenceRunError(KvgraphError):
    """The NumPy reference interpreter cannot run a graph: a missing or misshapen input or
    weight, an op without a reference rule, cache rows beyond a cache's capacity."""


class LoweringError(KvgraphError):
    """Lowering to (or running on) MAX failed; the message carries the IR line at fault."""


class KernelError(LoweringError):
    """MAX could not load kvgraph's custom kernels for a program. The message is one line: the
    kernel, MAX's reason, and the way out (``KVGRAPH_CUSTOM_KERNELS=off``: MAX's own ops)."""

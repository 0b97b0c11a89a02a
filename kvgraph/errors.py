"""Every error kvgraph raises on purpose derives from :class:`KvgraphError`."""


class KvgraphError(Exception):
    """Base class of kvgraph's own errors."""


class SpecError(KvgraphError, ValueError):
    """An invalid decoder spec; the message names the field and the value at fault."""

    def __init__(self, field: str, value, why: str):
        self.field, self.value, self.why = field, value, why
        super().__init__(f"{field}={value!r}: {why}")


class IRTypeError(KvgraphError, TypeError):
    """An op's operands break its type rule (raised by ``infer_type``)."""


class VerifyError(KvgraphError):
    """A graph breaks an IR invariant; the message shows the offending node in context."""


class PassError(KvgraphError):
    """A pass cannot rewrite a graph; the message names the node that breaks it."""


class LoweringError(KvgraphError):
    """Lowering to (or running on) MAX failed; the message carries the IR line at fault."""

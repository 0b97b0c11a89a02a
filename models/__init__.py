"""Model families served on kvgraph, one folder each: ``models/whisper/`` (OpenAI Whisper). A
family is a kvgraph plugin (its named specs and ``kvgraph`` subcommands) plus the library and
apps around its compiled programs.

The flat module paths of before (``models.serve``, ``models.audio``, ...) still import, with a
:class:`DeprecationWarning`, for one release (:mod:`models.compat`)."""

from models import compat

compat.install()

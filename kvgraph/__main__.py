"""``python -m kvgraph ...``: the kvgraph command line (see :mod:`kvgraph.cli`)."""

from .cli import run

run()

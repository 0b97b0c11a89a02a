"""``python -m kvgraph ...``: the kvgraph command line (see :mod:`kvgraph.cli`)."""

import sys

from .cli import main

sys.exit(main())

"""Shared pytest set-up: markers (also declared in pyproject.toml), and the ``models`` plugin.

The Whisper specs and ``kvgraph transcribe`` reach kvgraph through the ``kvgraph.plugins``
entry point, which exists only once this checkout is installed (``make``); applying the plugin
here lets the suite run against a checkout whose installed metadata is older. Applying it
twice (here and through the entry point) is a no-op.
"""

import kvgraph.plugins
import models.plugin

kvgraph.plugins.use(models.plugin.register)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "max: compiles and runs graphs on MAX (slow when MAX's compile cache is cold)"
    )
    config.addinivalue_line("markers", "slow: long-running parity tests")


def pytest_terminal_summary(terminalreporter):
    """With KVGRAPH_TOL_REPORT=1: each scaled comparison's worst measured ratio (tests/tolerance.py)."""
    import tolerance

    if tolerance.reporting():
        terminalreporter.write_line("measured |diff| / (eps * scale), worst per comparison:")
        for line in tolerance.report():
            terminalreporter.write_line(line)

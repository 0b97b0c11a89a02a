"""Shared pytest set-up: markers only (also declared in pyproject.toml)."""


def pytest_configure(config):
    config.addinivalue_line("markers", "max: compiles and runs graphs on MAX (slow when MAX's compile cache is cold)")
    config.addinivalue_line("markers", "slow: long-running parity tests")


def pytest_terminal_summary(terminalreporter):
    """With KVGRAPH_TOL_REPORT=1: each scaled comparison's worst measured ratio (tests/tolerance.py)."""
    import tolerance
    if tolerance.reporting():
        terminalreporter.write_line("measured |diff| / (eps * scale), worst per comparison:")
        for line in tolerance.report():
            terminalreporter.write_line(line)

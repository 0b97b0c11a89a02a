"""Shared pytest set-up: markers only (also declared in pyproject.toml)."""


def pytest_configure(config):
    config.addinivalue_line("markers", "max: compiles and runs graphs on MAX (slow when MAX's compile cache is cold)")
    config.addinivalue_line("markers", "slow: long-running parity tests")

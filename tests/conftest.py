"""Shared fixtures. The real-server fixtures live in ``tests/fixtures/`` as plugins."""

from __future__ import annotations

pytest_plugins = [
    "tests.fixtures.data",
    "tests.fixtures.s3",
    "tests.fixtures.labelstudio",
]

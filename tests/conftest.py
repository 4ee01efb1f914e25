"""Shared fixtures. The real-server fixtures live in ``tests/fixtures/`` as plugins."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest_plugins = [
    "tests.fixtures.data",
    "tests.fixtures.s3",
    "tests.fixtures.labelstudio",
]


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """torch on one thread for the test (2-core machines: no oversubscription), restored
    after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

"""The contract suite's `backend`: the backend of the test's `backend_spec`, terminated after."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

import rhapsody_prefect as rhapsody


@pytest.fixture
async def backend(backend_spec: tuple[str, dict]) -> AsyncIterator[object]:
    name, kwargs = backend_spec
    backend = rhapsody.get_backend(name, **kwargs)
    try:
        yield backend
    finally:
        await backend.terminate()

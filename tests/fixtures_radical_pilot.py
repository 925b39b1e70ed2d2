"""Fixtures for the `radical_pilot` backend in the shared suites.

One pilot on `local.localhost` serves a test module: every backend created with
`shared=True` and the same options reuses it (`terminate()` only detaches), and the
fixture closes it when the module ends. Module scope, not session: an idle pilot's
two dozen components take most of a core, which would slow the rest of the session.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def _rp_work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    from rhapsody_prefect.backends.radical_pilot import close_shared_pilots

    yield tmp_path_factory.mktemp("rp")
    close_shared_pilots()


@pytest.fixture
def radical_pilot_backend_spec(_rp_work: pathlib.Path) -> tuple[str, dict]:
    return "radical_pilot", {"work_dir": str(_rp_work), "shared": True}

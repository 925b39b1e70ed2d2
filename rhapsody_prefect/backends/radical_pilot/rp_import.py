"""RADICAL-Pilot and radical.utils, imported once and quietly.

    from .rp_import import rp, ru
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    # radical.utils warns when `logging` was imported first (Prefect, pytest do).
    warnings.filterwarnings("ignore", message=".*before `logging`")
    import radical.pilot as rp
    import radical.utils as ru

__all__ = ["rp", "ru"]

"""RADICAL-Pilot and radical.utils, imported once and quietly, and the releases supported.

    from .rp_import import rp, ru
    unsupported_releases()   # None, or "radical.pilot 1.102.0 is installed; the radical_pilot
                             # backend supports radical.pilot >=1.103.2,<1.104 with ..."

`SUPPORTED_RELEASES` is what the backend is tested with (pyproject.toml's
`radical_pilot` extra says the same; a test keeps them equal). Older releases differ
where the backend depends on them: radical.utils 1.100 has no `iface` setting (the
agent's command port would leave loopback, `bind_interface.check()` refuses it), radical.pilot
up to 1.103.0 keeps task uids unique per *process* (a second pilot in one flow process
fails on its first task), 1.103.1 prints every submitted uid to stdout.
"""

from __future__ import annotations

import importlib.metadata
import re
import warnings

with warnings.catch_warnings():
    # radical.utils warns when `logging` was imported first (Prefect, pytest do).
    warnings.filterwarnings("ignore", message=".*before `logging`")
    import radical.pilot as rp
    import radical.utils as ru

#: distribution -> (lowest release supported, first release not supported).
SUPPORTED_RELEASES: dict[str, tuple[str, str]] = {
    "radical.pilot": ("1.103.2", "1.104"),
    "radical.utils": ("1.103.1", "1.104"),
}


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])


def supported_releases() -> str:
    """The supported releases as pip ranges, for messages."""
    return " with ".join(f"{name} >={low},<{high}"
                         for name, (low, high) in SUPPORTED_RELEASES.items())


def unsupported_releases(installed: dict[str, str] | None = None) -> str | None:
    """Why the installed radical.pilot / radical.utils are not releases this backend
    supports (naming the supported ones), or None. `installed`: name -> version
    (default: what importlib.metadata finds)."""
    if installed is None:
        installed = {}
        for name in SUPPORTED_RELEASES:
            try:
                installed[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                installed[name] = "(not installed)"
    wrong = [f"{name} {installed[name]}" for name, (low, high) in SUPPORTED_RELEASES.items()
             if not _release(low) <= _release(installed[name]) < _release(high)]
    if not wrong:
        return None
    return (f"{' and '.join(wrong)} {'is' if len(wrong) == 1 else 'are'} installed; "
            f"the radical_pilot backend supports "
            f"{supported_releases()} (the releases it is tested with): "
            "pip install 'rhapsody-prefect[radical_pilot]' installs them")


__all__ = ["SUPPORTED_RELEASES", "rp", "ru", "supported_releases", "unsupported_releases"]

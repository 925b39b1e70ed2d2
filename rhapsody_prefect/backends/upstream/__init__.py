"""Upstream RHAPSODY's backends (`rhapsody-py`) under this project's engine and registry.

    from rhapsody_prefect import RhapsodyRunner, get_backend
    backend = get_backend("upstream.concurrent")                  # its ConcurrentExecutionBackend
    backend = get_backend("upstream.dask", resources={"n_workers": 2})
    runner = RhapsodyRunner("upstream.noop")                      # a Prefect task runner

    register_backend("mine", "mypackage.backends.MyBackend")     # any upstream BaseBackend

`catalogue` names upstream's backends (`upstream.<name>`, never shadowing this
project's own) and what each needs; `backend.adapt` makes an engine backend of an
upstream class; `translate` turns an attempt into an upstream task and its result
into an `Outcome`. Install with `pip install 'rhapsody-prefect[upstream]'`; without
it nothing here imports `rhapsody`.
"""

from .backend import UpstreamBackend, adapt, availability, is_upstream_class
from .catalogue import PREFIX, upstream_backends

__all__ = [
    "PREFIX",
    "UpstreamBackend",
    "adapt",
    "availability",
    "is_upstream_class",
    "upstream_backends",
]

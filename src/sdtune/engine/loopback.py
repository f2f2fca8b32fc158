"""A one-machine Ray that listens on the loopback interface only.

``ray.init(_node_ip_address="127.0.0.1")`` is not enough (Ray 2.60): Ray turns a loopback node address into the
machine's reachable IP (``services.resolve_ip_for_localhost``), and its GCS, raylet and worker servers then bind
every interface, so a private job queue or web page would expose Ray's ports on the network (token auth, on by
default, guards them, but nothing outside this machine should reach them at all). Ray's own switch for a Ray that
is never a cluster, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (the default on macOS and Windows), makes the node
address the loopback one, and every server binds 127.0.0.1 (measured with ``ss -ltn``: before, ``*:PORT`` for
gcs_server and raylet; after, ``127.0.0.1:PORT`` only; tests/integration/test_ray_engine.py).

Ray's driver read the switch when it was imported and its child processes read it from the environment, so both
are set for the embedded Ray and restored when it ends (a later engine may join a real cluster from this process).
A driver joining a cluster at a loopback address (a ``ray start --head`` started so, with the switch) sets it too:
its node address must be the head's, 127.0.0.1, or Ray finds no local raylet and the driver waits.
"""

from __future__ import annotations

import os
from collections.abc import Callable

SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def is_loopback(host: str) -> bool:
    """Whether a host name or address (``localhost``, ``127.0.0.1``, ``::1``, ``[::1]``) is this machine's
    loopback interface; the server uses it too (a token is required off loopback)."""
    import ipaddress

    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_loopback_address(address: str) -> bool:
    """Whether a Ray address (``HOST:PORT``, ``ray://HOST:PORT``) names this machine's loopback interface."""
    return is_loopback(address.split("://", 1)[-1].rstrip("/").rpartition(":")[0])


def loopback_only() -> Callable[[], None]:
    """Make the next ``ray.init`` without an address a loopback-only Ray; returns what restores the settings."""
    from ray._private import ray_constants

    before_env = os.environ.get(SWITCH)
    before_constant = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    os.environ[SWITCH] = "0"
    if before_constant is not None:
        ray_constants.ENABLE_RAY_CLUSTER = False

    def restore() -> None:
        if before_env is None:
            os.environ.pop(SWITCH, None)
        else:
            os.environ[SWITCH] = before_env
        if before_constant is not None:
            ray_constants.ENABLE_RAY_CLUSTER = before_constant

    return restore

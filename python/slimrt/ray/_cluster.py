"""Connecting to Ray: the import with its install hint, the cluster address, the CPU check."""

from __future__ import annotations

from typing import Any

INSTALL_HINT = "pip install 'slimrt[ray]' (Ray Data, Ray Serve and pyarrow)"


def require_ray() -> Any:
    """The ``ray`` module, or an ImportError that says what to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ImportError(f"--ray / slimrt.ray needs Ray: {INSTALL_HINT} ({e})") from None
    return ray


def connect(address: str | None = None) -> Any:
    """Ray, connected: to ``address`` (``auto``, ``HOST:PORT`` or ``ray://HOST:10001``), else as
    ``ray.init()`` resolves it ($RAY_ADDRESS, the cluster ``ray start`` last started on this machine,
    or a new local one). A process already connected stays as it is."""
    ray = require_ray()
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False, logging_level="WARNING")
    return ray


def check_cpus(ray: Any, needed: float, what: str) -> None:
    """A clear error instead of an actor pool that waits forever for CPUs the cluster lacks."""
    have = ray.cluster_resources().get("CPU", 0)
    if needed > have:
        raise ValueError(f"{what} asks for {needed:g} CPUs; the Ray cluster has {have:g}")

"""``slimrt serve CKPT --ray-replicas N``: slimrt.serve's app as N Ray Serve replicas.

Each replica is a Ray actor (its own process, ``threads_per_replica`` torch threads and as many CPUs
reserved) that loads the checkpoint once and runs the same Starlette app as the single-process
server, engine thread and all; Ray Serve's proxy routes each HTTP request to one replica. So the API,
the request checks and the answers are those of ``slimrt serve``, and a greedy reply is the same
whichever replica gives it. Continuous batching happens inside a replica: ``max_ongoing_requests``
is set to what a replica can hold (``max_batch + max_queue``), so the replica's own queue, not Ray's,
decides when to answer 503. Metrics (/metrics) and /health are per replica; Ray Serve's health check
calls the replica's engine and restarts a replica whose engine died.
"""

from __future__ import annotations

import os
from typing import Any

from slimrt.ray._cluster import check_cpus, connect


def _replica_class() -> type:
    """The deployment class, built on first use so that importing this module needs no Ray."""
    from ray import serve

    @serve.ingress()  # late-bound: __serve_build_asgi_app__ builds the app inside the replica
    class SlimrtReplica:
        def __init__(self, checkpoint: str, model_name: str, threads: int, app_kwargs: dict[str, Any]) -> None:
            import torch

            from slimrt import serve as slimrt_serve
            from slimrt.runner import Runner

            torch.set_num_threads(threads)
            self._app = slimrt_serve.app(Runner.from_checkpoint(checkpoint), model_name=model_name, **app_kwargs)

        def __serve_build_asgi_app__(self) -> Any:
            return self._app

        def check_health(self) -> None:
            error = self._app.state.server.engine.error  # set when the engine's thread died
            if error is not None:
                raise RuntimeError(f"slimrt serve: {error}")

    return SlimrtReplica


def application(checkpoint: str | os.PathLike, *, replicas: int = 2, threads_per_replica: int = 1,
                model_name: str | None = None, **app_kwargs: Any) -> Any:
    """The Ray Serve application (``serve.run`` it, or use ``deploy``). app_kwargs go to
    ``slimrt.serve.app`` (max_batch, max_queue, max_context, api_key, prefill_chunk, max_body)."""
    from ray import serve

    from slimrt import serve as slimrt_serve

    slimrt_serve._web_stack()
    for name, value in (("replicas", replicas), ("threads_per_replica", threads_per_replica)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"slimrt.ray.serve: {name}={value!r} must be an integer >= 1")
    path = os.path.abspath(os.fspath(checkpoint))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"slimrt.ray.serve: checkpoint {path} is not a directory")
    name = model_name or os.path.basename(os.path.normpath(path))
    held = app_kwargs.get("max_batch", 16) + app_kwargs.get("max_queue", 64)
    deployment = serve.deployment(_replica_class(), name="slimrt", num_replicas=replicas,
                                  ray_actor_options={"num_cpus": threads_per_replica},
                                  max_ongoing_requests=held, health_check_period_s=5)
    return deployment.bind(path, name, threads_per_replica, app_kwargs)


def deploy(checkpoint: str | os.PathLike, *, replicas: int = 2, threads_per_replica: int = 1,
           host: str = "127.0.0.1", port: int = 8000, address: str | None = None, name: str = "slimrt",
           model_name: str | None = None, **app_kwargs: Any) -> str:
    """Connects to Ray (see slimrt.ray.connect), starts Ray Serve's HTTP proxy on host:port and deploys
    ``replicas`` replicas of the checkpoint as the application ``name`` on route "/"; returns the
    base URL once every replica is up. ``serve.shutdown()`` (or ``serve.delete(name)``) stops it."""
    ray = connect(address)
    from ray import serve

    app = application(checkpoint, replicas=replicas, threads_per_replica=threads_per_replica,
                      model_name=model_name, **app_kwargs)
    check_cpus(ray, replicas * threads_per_replica,
               f"--ray-replicas {replicas} x --threads-per-replica {threads_per_replica}")
    serve.start(http_options={"host": host, "port": port})
    serve.run(app, name=name, route_prefix="/", blocking=False)
    return f"http://{host}:{port}"


__all__ = ["application", "deploy"]

"""slimrt on Ray: corpus embedding on Ray Data and the OpenAI server's replicas on Ray Serve.

``slimrt.ray.embed(dataset, ckpt)`` adds an ``embedding`` column to a Ray Dataset with an actor
pool whose actors each load the checkpoint once; ``slimrt.ray.embed_corpus`` is ``slimrt embed
--input ... --ray``: the restartable shard plan of ``slimrt.corpus`` run on that pool;
``slimrt.ray.serve`` deploys ``slimrt.serve.app`` as N Ray Serve replicas (``slimrt serve
--ray-replicas N``).

Ray is an optional extra (``pip install 'slimrt[ray]'``): ``import slimrt`` never imports this
package, and this package imports Ray only when one of its functions runs. Checkpoint paths must
be readable where the actors run (on a cluster: a shared filesystem, or the same path on every
node); corpus files are read and shards written by the driver alone.
"""

from __future__ import annotations

from typing import Any

from slimrt.ray._cluster import INSTALL_HINT, check_cpus, connect, require_ray


def __getattr__(name: str) -> Any:  # the functions live in data.py / serve.py, imported on first use
    import importlib

    if name in ("embed", "embed_corpus"):
        return getattr(importlib.import_module("slimrt.ray.data"), name)
    if name in ("serve", "deploy"):
        module = importlib.import_module("slimrt.ray.serve")  # binds slimrt.ray.serve as it imports
        return module if name == "serve" else module.deploy
    raise AttributeError(f"module 'slimrt.ray' has no attribute {name!r}")


__all__ = ["INSTALL_HINT", "check_cpus", "connect", "embed", "embed_corpus", "require_ray"]

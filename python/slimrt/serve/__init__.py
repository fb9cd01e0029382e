"""``slimrt serve``: an OpenAI-compatible HTTP server over a Runner, with continuous batching.

``slimrt.serve.app(runner)`` gives the ASGI app (run it with any ASGI server, e.g. uvicorn);
``slimrt serve CKPT`` runs it on uvicorn. Endpoints: POST /v1/chat/completions, /v1/completions
(decoders; ``stream: true`` as server-sent events), /v1/embeddings (encoders); GET /v1/models,
/health, /metrics (Prometheus). The engines are in ``engine.py``, the request checks in ``api.py``,
the HTTP side in ``server.py``.

The web stack is an optional extra (``pip install 'slimrt[serve]'``): nothing here is imported by
``import slimrt``, and this module imports it only when an app is built.
"""

from __future__ import annotations

from typing import Any

INSTALL_HINT = "slimrt serve needs the serve extra: pip install 'slimrt[serve]' (starlette, uvicorn, sse-starlette, " \
               "prometheus-client)"


def _web_stack() -> None:
    """ImportError that says what to install when a package of the serve extra is missing."""
    import importlib

    missing = []
    for name in ("starlette", "uvicorn", "sse_starlette", "prometheus_client", "pydantic"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f"{INSTALL_HINT}; missing: {', '.join(missing)}")


def app(runner: Any, *, model_name: str = "slimrt", max_batch: int = 16, max_queue: int = 64,
        max_context: int = 2048, api_key: str | None = None, max_body: int = 4 << 20,
        prefill_chunk: int = 512) -> Any:
    """The ASGI app serving ``runner`` (a slimrt.Runner) under ``model_name``.

    max_batch: cache rows, i.e. sequences decoded together; max_context: tokens per sequence (prompt
    + reply; also sizes the KV cache: rows x max_context slots); max_queue: sequences that may wait
    for a row before requests get 503; api_key: required as ``Authorization: Bearer KEY`` on /v1/*;
    max_body: request bytes (413 above); prefill_chunk: prompt tokens per model call.
    The engine's thread starts with the app's lifespan (the ASGI server's startup) and stops with it.
    """
    _web_stack()
    from slimrt.serve.server import build_app

    for name, value, low in (("max_batch", max_batch, 1), ("max_queue", max_queue, 1), ("max_context", max_context, 2),
                             ("max_body", max_body, 1), ("prefill_chunk", prefill_chunk, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"slimrt.serve.app: {name}={value!r} must be an integer >= {low}")
    if api_key is not None and not api_key:
        raise ValueError("slimrt.serve.app: api_key must not be empty (None for no key)")
    return build_app(runner, model_name=model_name, max_batch=max_batch, max_queue=max_queue,
                     max_context=max_context, api_key=api_key, max_body=max_body, prefill_chunk=prefill_chunk)


__all__ = ["app", "INSTALL_HINT"]

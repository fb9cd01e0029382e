"""`slimrt serve CKPT`: the OpenAI-compatible HTTP server (slimrt.serve) on uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def _cmd_serve(args: argparse.Namespace) -> int:
    from slimrt import serve

    serve._web_stack()  # says what to install before the model loads
    import uvicorn

    from slimrt.runner import Runner

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    api_key = args.api_key or os.environ.get("SLIMRT_API_KEY") or None
    if args.ray_replicas is not None:
        return _serve_on_ray(args, api_key)
    if args.ray is not None or args.threads_per_replica is not None:
        raise ValueError("serve: --ray and --threads-per-replica go with --ray-replicas N")
    rt = Runner.from_checkpoint(args.checkpoint)
    name = args.model_name or os.path.basename(os.path.normpath(args.checkpoint))
    app = serve.app(rt, model_name=name, max_batch=args.max_batch, max_queue=args.max_queue,
                    max_context=args.max_context, api_key=api_key, prefill_chunk=args.prefill_chunk)
    if api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"slimrt serve: listening on {args.host} with no API key: anyone who reaches it can use it "
              "(--api-key or SLIMRT_API_KEY)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0


def _serve_on_ray(args: argparse.Namespace, api_key: str | None) -> int:
    """The same app as N Ray Serve replicas behind Ray Serve's proxy on --host:--port, until Ctrl-C."""
    import time

    from slimrt.ray._cluster import require_ray

    require_ray()
    from ray import serve

    from slimrt.ray.serve import deploy

    url = deploy(args.checkpoint, replicas=args.ray_replicas, threads_per_replica=args.threads_per_replica or 1,
                 host=args.host, port=args.port, address=args.ray or None, model_name=args.model_name,
                 max_batch=args.max_batch, max_queue=args.max_queue, max_context=args.max_context, api_key=api_key,
                 prefill_chunk=args.prefill_chunk)
    print(f"slimrt serve: {args.ray_replicas} Ray Serve replicas of {args.checkpoint} at {url}/v1 (Ctrl-C stops "
          "them)", file=sys.stderr)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("slimrt serve: stopping the replicas", file=sys.stderr)
    finally:
        serve.shutdown()
    return 0


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} must be >= 1")
    return n


def add_parser(sub) -> None:
    s = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (chat, completions, embeddings) with "
                                     "continuous batching")
    s.add_argument("checkpoint", help="slimrt checkpoint directory")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--model-name", default=None, help="the model id clients send (default: the checkpoint's folder "
                                                      "name)")
    s.add_argument("--max-batch", type=_positive, default=16, help="sequences decoded together (KV-cache rows)")
    s.add_argument("--max-queue", type=_positive, default=64,
                   help="sequences that may wait for a row; past that requests get 503 with Retry-After")
    s.add_argument("--max-context", type=_positive, default=2048,
                   help="tokens per sequence, prompt + reply, capped by the model's context; the KV cache holds "
                        "max-batch x max-context tokens")
    s.add_argument("--prefill-chunk", type=_positive, default=512,
                   help="prompt tokens per model call: a long prompt delays the other streams by one chunk at a time")
    s.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: $SLIMRT_API_KEY, else none)")
    s.add_argument("--ray-replicas", type=_positive, default=None, metavar="N",
                   help="serve on Ray Serve: N replicas, each its own process loading the checkpoint, behind Ray "
                        "Serve's proxy on --host:--port (pip install 'slimrt[ray]')")
    s.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="with --ray-replicas: the Ray cluster (default: $RAY_ADDRESS, the running one, or a new "
                        "local Ray)")
    s.add_argument("--threads-per-replica", type=_positive, default=None,
                   help="with --ray-replicas: torch threads and CPUs per replica (default 1)")
    s.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    s.set_defaults(func=_cmd_serve)

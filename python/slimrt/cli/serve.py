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
    rt = Runner.from_checkpoint(args.checkpoint)
    name = args.model_name or os.path.basename(os.path.normpath(args.checkpoint))
    app = serve.app(rt, model_name=name, max_batch=args.max_batch, max_queue=args.max_queue,
                    max_context=args.max_context, api_key=api_key, prefill_chunk=args.prefill_chunk)
    if api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"slimrt serve: listening on {args.host} with no API key: anyone who reaches it can use it "
              "(--api-key or SLIMRT_API_KEY)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
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
    s.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    s.set_defaults(func=_cmd_serve)

"""`slimrt embed`, `slimrt generate` and `slimrt chat`: the runner on a checkpoint (corpus files: _corpus.py)."""

from __future__ import annotations

import argparse
import json
import sys

from slimrt.cli import _corpus


def _read_lines(path: str) -> list[str]:
    """One text per line of a UTF-8 file, or of standard input for "-". Blank lines are kept (each is a
    row of the output, so row i always answers line i)."""
    if path == "-":
        return [line.rstrip("\r\n") for line in sys.stdin]
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\r\n") for line in f]


def _cmd_embed(args: argparse.Namespace) -> int:
    import time

    from slimrt.runner import Runner

    if _corpus.check(args):
        return _corpus.run(args)

    texts = list(args.text or [])
    if args.file:
        texts += _read_lines(args.file)
    if not texts:
        raise ValueError("embed: no input; pass --text (repeatable), --file FILE (one text per line, - for stdin) "
                         "or --input CORPUS --output DIR")
    t0 = time.perf_counter()
    rt = Runner.from_checkpoint(args.checkpoint)
    t1 = time.perf_counter()
    emb = rt.embed(texts, batch_size=args.batch_size, normalize=False if args.no_normalize else None)
    t2 = time.perf_counter()
    rows = [[round(v, 6) for v in row] for row in emb.tolist()]
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "texts": len(texts), "dim": emb.shape[1],
                          "normalized": rt.normalize and not args.no_normalize, "load_s": round(t1 - t0, 4),
                          "embed_s": round(t2 - t1, 4), "embeddings": rows}))
    else:
        for row in rows:
            print(json.dumps(row))
    if args.verbose:
        print(f"slimrt: loaded in {t1 - t0:.2f} s; embedded {len(texts)} texts in {t2 - t1:.3f} s "
              f"({len(texts) / max(t2 - t1, 1e-9):.1f} texts/s), dim {emb.shape[1]}", file=sys.stderr)
    return 0


def _generation_report(stats: dict, text: str, load_s: float) -> str:
    """One line on what the generation did; a rate only where there were decode steps to time."""
    n, dec = stats.get("new_tokens", 0), stats.get("decode_s", 0.0)
    line = (f"slimrt: loaded in {load_s:.2f} s; prompt {stats.get('prompt_tokens', 0)} tokens, prefill "
            f"{stats.get('prefill_s', 0.0) * 1e3:.1f} ms; ")
    if n <= 1 and not text:
        return line + ("no text: the model ended the sequence at once (its first token was end-of-sequence); "
                       "an instruct or chat model usually wants --chat")
    if n <= 1:
        return line + "1 new token (no decode step to time)"
    return line + f"{n} new tokens, {n - 1} decode steps in {dec:.3f} s ({(n - 1) / max(dec, 1e-9):.1f} tokens/s)"


def _cmd_generate(args: argparse.Namespace) -> int:
    import time

    from slimrt.runner import Runner

    t0 = time.perf_counter()
    rt = Runner.from_checkpoint(args.checkpoint)
    t1 = time.perf_counter()
    stats: dict = {}
    sampling = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                    top_p=args.top_p, seed=args.seed, stats=stats)
    if args.chat:  # one turn through the tokenizer's chat template, stopped at its end-of-turn token
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + \
                   [{"role": "user", "content": args.prompt}]
        pieces = rt.chat_stream(messages, **sampling)
    else:
        pieces = rt.stream(args.prompt, **sampling)
    text = []
    for piece in pieces:
        text.append(piece)
        if not args.json:
            sys.stdout.write(piece)
            sys.stdout.flush()
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "prompt": args.prompt, "chat": args.chat,
                          "text": "".join(text), "load_s": round(t1 - t0, 4), **stats}))
    else:
        sys.stdout.write("\n")
    if args.verbose or (not text and not args.json):
        print(_generation_report(stats, "".join(text), t1 - t0), file=sys.stderr)
    return 0


CHAT_HELP = "/reset clears the conversation, /exit or Ctrl-D quits, Ctrl-C stops the current reply"


def _cmd_chat(args: argparse.Namespace) -> int:
    from slimrt import chat
    from slimrt.runner import Runner

    rt = Runner.from_checkpoint(args.checkpoint)
    system = [{"role": "system", "content": args.system}] if args.system else []
    chat.prompt_ids(rt.tokenizer, system + [{"role": "user", "content": "hi"}])  # no template: fail now, not later
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"slimrt chat: {CHAT_HELP}", file=sys.stderr)
    history = list(system)
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            break
        except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh prompt, not the end of the program
            print(file=sys.stderr)
            continue
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history = list(system)
            print("(conversation cleared)", file=sys.stderr)
            continue
        if text.startswith("/") and text.split()[0] in ("/help", "/?"):
            print(CHAT_HELP, file=sys.stderr)
            continue
        history.append({"role": "user", "content": line})
        reply: list[str] = []
        try:
            for piece in rt.chat_stream(history, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                        top_k=args.top_k, top_p=args.top_p, seed=args.seed):
                reply.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:  # stops this reply; what was said so far stays in the history
            sys.stdout.write(" [stopped]")
        except ValueError as e:  # the conversation no longer fits the context: keep the program going
            history.pop()
            print(f"slimrt: {e} (/reset starts over)", file=sys.stderr)
            continue
        sys.stdout.write("\n")
        sys.stdout.flush()
        history.append({"role": "assistant", "content": "".join(reply)})
    return 0


def _add_sampling(s, max_new_tokens: int) -> None:
    s.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    s.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--top-p", type=float, default=None)
    s.add_argument("--seed", type=int, default=None)


def add_parser(sub) -> None:
    s = sub.add_parser("embed", help="sentence embeddings from an encoder checkpoint: one JSON array per line, or a "
                                     "corpus file into Parquet shards (--input/--output, --ray)")
    s.add_argument("checkpoint", help="slimrt checkpoint directory")
    s.add_argument("--text", action="append", help="a sentence to embed (repeatable)")
    s.add_argument("--file", help="a UTF-8 text file, one text per line (blank lines kept); - reads stdin")
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--no-normalize", action="store_true", help="do not scale embeddings to unit length")
    s.add_argument("--json", action="store_true", help="one JSON object (settings, timings, embeddings)")
    s.add_argument("--verbose", action="store_true", help="print timing (texts/s) to stderr")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    _corpus.add_arguments(s)
    s.set_defaults(func=_cmd_embed)
    s = sub.add_parser("generate", help="stream a continuation of a prompt from a decoder checkpoint")
    s.add_argument("checkpoint", help="slimrt checkpoint directory")
    s.add_argument("--prompt", required=True)
    s.add_argument("--chat", action="store_true",
                   help="send the prompt as one chat turn through the tokenizer's chat template (instruct models)")
    s.add_argument("--system", default=None, help="with --chat: a system message before the prompt")
    _add_sampling(s, 64)
    s.add_argument("--json", action="store_true", help="one JSON object (text, token counts, timings) at the end")
    s.add_argument("--verbose", action="store_true", help="print timing (tokens/s) to stderr")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(func=_cmd_generate)
    s = sub.add_parser("chat", help="interactive chat with a decoder checkpoint (its tokenizer's chat template)")
    s.add_argument("checkpoint", help="slimrt checkpoint directory")
    s.add_argument("--system", default=None, help="a system message that starts every conversation")
    _add_sampling(s, 256)
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(func=_cmd_chat)

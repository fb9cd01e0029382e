"""The `slimrt` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _cmd_info(args: argparse.Namespace) -> int:
    import slimrt

    if args.checkpoint is None:
        print(json.dumps(slimrt.info(), indent=2))
        return 0
    from pathlib import Path

    from slimrt.checkpoint import read_metadata
    from slimrt.compress.report import format_report

    meta = read_metadata(args.checkpoint)  # validated slimrt.json; no tensor is read
    root = Path(args.checkpoint)
    model = meta.get("model", {})
    print(f"checkpoint   {root}")
    print(f"format       {meta.get('format_version')} (written by slimrt {meta.get('slimrt_version')})")
    print(f"model        {model.get('architecture', model.get('kind'))}")
    for name in sorted(meta.get("files", {})):
        print(f"file         {name}: {(root / name).stat().st_size / 1e6:.2f} MB")
    comp = meta.get("compression") or {}
    if comp.get("recipe") is not None:
        print("recipe       " + json.dumps(comp["recipe"], sort_keys=True))
    if comp.get("quality"):
        print("quality      " + json.dumps(comp["quality"], sort_keys=True))
    for key in ("student", "distill"):  # issue 8: how the checkpoint was distilled
        if comp.get(key):
            print(f"{key:<12} " + json.dumps(comp[key], sort_keys=True))
    if comp.get("layers"):
        print()
        print(format_report(comp))
    return 0


# ---- bench: runs the scripts in benchmarks/ (they live in the source tree, not in the wheel) ----
BENCH_ALIASES = {"gemm": "int8_gemm"}


def _bench_dir() -> Path:
    import slimrt

    d = Path(slimrt.__file__).resolve().parent.parent.parent / "benchmarks"
    if not d.is_dir():
        raise FileNotFoundError(f"benchmarks/ not found next to {d.parent}: the benchmark scripts live in the "
                                "slimrt source checkout; install it with `pip install -e .` from there")
    return d


def _cmd_bench(args: argparse.Namespace) -> int:
    import subprocess

    d = _bench_dir()
    if args.name == "all":
        scripts = sorted(d.glob("bench_*.py"))
    else:
        script = d / f"bench_{BENCH_ALIASES.get(args.name, args.name)}.py"
        if not script.is_file():
            known = sorted(p.stem[len("bench_"):] for p in d.glob("bench_*.py"))
            raise ValueError(f"no benchmark named {args.name!r}; known: {', '.join(known + list(BENCH_ALIASES))}, all")
        scripts = [script]
    rc = 0
    for script in scripts:
        cmd = [sys.executable, str(script)] + (["--quick"] if args.quick else [])
        cmd += ["--reps", str(args.reps)] if args.reps else []
        print(f"slimrt bench: {' '.join(cmd[1:])}", flush=True)
        rc = rc or subprocess.run(cmd).returncode
    return rc
# ---- compress ----
def _load_hf_model(src: str):
    """(model, tokenizer or None) from a local HF model directory (slimrt.evaluate.load_hf), offline."""
    import os

    from slimrt.evaluate import load_hf

    if not os.path.isdir(src):
        raise ValueError(f"SRC {src!r} is not a local model directory (expected config.json and weights)")
    model, tokenizer = load_hf(src)
    if tokenizer is None:
        print(f"slimrt: no tokenizer in {src}; the checkpoint will have none", file=sys.stderr)
    return model, tokenizer


def _read_calibration(path: str, batch_size: int = 8) -> list[list[str]]:
    """Calibration texts (see _read_texts) in batches of batch_size."""
    texts = _read_texts(path, flag="--calibration")
    return [texts[i:i + batch_size] for i in range(0, len(texts), batch_size)]


def _cmd_compress(args: argparse.Namespace) -> int:
    import os

    import slimrt
    from slimrt import checkpoint  # its own module (the checkpoint format); imported before the long steps

    if os.path.exists(args.output) and not args.overwrite:
        raise ValueError(f"output {args.output!r} exists; pass --overwrite to replace it")
    from slimrt.recipe import resolve

    recipe = resolve(args.recipe)
    if args.smoothquant or args.alpha is not None:
        import dataclasses

        recipe = dataclasses.replace(recipe, smoothquant=True, alpha=recipe.alpha if args.alpha is None else args.alpha)
    calibration = _read_calibration(args.calibration) if args.calibration else None
    if recipe.smoothquant and calibration is None:
        raise ValueError("--smoothquant needs --calibration FILE")
    progress = not args.no_progress
    model, tokenizer = _load_hf_model(args.src)
    if calibration is not None and tokenizer is None:
        raise ValueError(f"--calibration needs a tokenizer, and {args.src} has none")
    slimrt.compress(model, recipe, calibration=calibration, tokenizer=tokenizer, progress=progress)
    slimrt.report(model)
    quality_step(args, model, tokenizer, args.src)  # --distill-steps, --min-cosine/--max-kl (issue 8; exit 3)
    checkpoint.save(model, args.output, tokenizer=tokenizer, overwrite=args.overwrite, entropy=args.entropy)
    print(f"slimrt: wrote {args.output}")
    return 0


def _add_compress_parser(sub) -> None:
    s = sub.add_parser("compress", help="compress a local HF model directory into a slimrt checkpoint")
    s.add_argument("src", metavar="SRC", help="local Hugging Face model directory")
    s.add_argument("-o", "--output", required=True, metavar="OUT", help="checkpoint directory to write")
    s.add_argument("--recipe", default="w8a8", help="preset name (w8a8, w8, ...) or a recipe JSON file")
    s.add_argument("--calibration", metavar="FILE", help="calibration texts: one per line, or .jsonl")
    s.add_argument("--smoothquant", action="store_true", help="SmoothQuant migration for w8a8 (needs --calibration)")
    s.add_argument("--alpha", type=float, default=None, help="SmoothQuant strength in [0, 1] (default 0.5)")
    s.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    s.add_argument("--entropy", choices=["zstd"], default=None, help="entropy-code the tensors")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(func=_cmd_compress)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slimrt", description="Runtime for compressed transformer models.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("info", help="print the build and chosen ISA, or with CKPT a checkpoint's recipe, layers and sizes")
    s.add_argument("checkpoint", nargs="?", default=None, help="a slimrt checkpoint directory")
    s.set_defaults(func=_cmd_info)
    _add_runner_commands(sub)  # runner (issue 4)
    _add_demo_command(sub)  # demo (issue 4)
    s = sub.add_parser("bench", help="run a benchmark from benchmarks/ (gemm, ..., or all)")
    s.add_argument("name", help="benchmark name: gemm (= int8_gemm), any benchmarks/bench_<name>.py, or all")
    s.add_argument("--quick", action="store_true", help="CI-size grid")
    s.add_argument("--reps", type=int, default=None, help="timed rounds per shape (the script's default if unset)")
    s.set_defaults(func=_cmd_bench)
    _add_compress_parser(sub)
    _add_quality_commands(sub)  # quality: eval, distill, compress gate flags (issue 8); keep last
    return p


# ----- runner (issue 4): `slimrt embed`, `slimrt generate` -------------------------------------
def _cmd_embed(args: argparse.Namespace) -> int:
    import time

    from slimrt.runner import Runner

    texts = list(args.text or [])
    if args.file:
        with open(args.file, encoding="utf-8") as f:
            texts += [line.rstrip("\n") for line in f if line.strip()]
    if not texts:
        raise ValueError("embed: no input; pass --text (repeatable) or --file with one sentence per line")
    t0 = time.perf_counter()
    rt = Runner.from_checkpoint(args.checkpoint)
    t1 = time.perf_counter()
    emb = rt.embed(texts, batch_size=args.batch_size, normalize=not args.no_normalize)
    t2 = time.perf_counter()
    for row in emb.tolist():
        print(json.dumps([round(v, 6) for v in row]))
    if args.verbose:
        print(f"slimrt: loaded in {t1 - t0:.2f} s; embedded {len(texts)} sentences in {t2 - t1:.3f} s "
              f"({len(texts) / max(t2 - t1, 1e-9):.1f} sentences/s), dim {emb.shape[1]}", file=sys.stderr)
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    import time

    from slimrt.runner import Runner

    t0 = time.perf_counter()
    rt = Runner.from_checkpoint(args.checkpoint)
    t1 = time.perf_counter()
    stats: dict = {}
    for piece in rt.stream(args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                           top_k=args.top_k, top_p=args.top_p, seed=args.seed, stats=stats):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if args.verbose:
        n, dec = stats.get("new_tokens", 0), stats.get("decode_s", 0.0)
        print(f"slimrt: loaded in {t1 - t0:.2f} s; prompt {stats.get('prompt_tokens', 0)} tokens, prefill "
              f"{stats.get('prefill_s', 0.0) * 1e3:.1f} ms; {n} new tokens in {dec:.3f} s "
              f"({n / max(dec, 1e-9):.1f} tokens/s)", file=sys.stderr)
    return 0


def _add_runner_commands(sub) -> None:
    s = sub.add_parser("embed", help="sentence embeddings from an encoder checkpoint, one JSON array per line")
    s.add_argument("checkpoint", help="slimrt checkpoint directory")
    s.add_argument("--text", action="append", help="a sentence to embed (repeatable)")
    s.add_argument("--file", help="a UTF-8 text file, one sentence per line")
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--no-normalize", action="store_true", help="do not scale embeddings to unit length")
    s.add_argument("--verbose", action="store_true", help="print timing (sentences/s) to stderr")
    s.set_defaults(func=_cmd_embed)
    s = sub.add_parser("generate", help="stream a continuation of a prompt from a decoder checkpoint")
    s.add_argument("checkpoint", help="slimrt checkpoint directory")
    s.add_argument("--prompt", required=True)
    s.add_argument("--max-new-tokens", type=int, default=64)
    s.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--top-p", type=float, default=None)
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--verbose", action="store_true", help="print timing (tokens/s) to stderr")
    s.set_defaults(func=_cmd_generate)


# ----- demo (issue 4): `slimrt demo` -----------------------------------------------------------
def _cmd_demo(args: argparse.Namespace) -> int:
    from slimrt import demo

    demo.run(n_texts=args.texts, out_dir=args.output, recipe=args.recipe)
    return 0


def _add_demo_command(sub) -> None:
    s = sub.add_parser("demo", help="compress the bundled all-MiniLM-L6-v2, reload it and compare it with fp32")
    s.add_argument("--texts", type=int, default=256, help="number of pydoc paragraphs to embed (default 256)")
    s.add_argument("--recipe", default="w8a8", help="compression recipe (default w8a8)")
    s.add_argument("-o", "--output", default=None, help="keep the checkpoint here (default: a temporary directory)")
    s.set_defaults(func=_cmd_demo)



# ----- quality (issue 8): `slimrt eval`, `slimrt distill`, the compress gate and --distill-steps -------
QUALITY_EXIT = 3  # a missed --min-cosine / --max-kl: nothing written


def _read_texts(path: str, flag: str = "--data") -> list[str]:
    """Texts for calibration, evaluation or distillation: one per non-empty line of a text file, or a
    .jsonl whose lines are JSON strings or {"text": ...} objects. ``flag`` names the option in errors."""
    texts = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            if path.endswith(".jsonl"):
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{flag} {path}: line {i} is not JSON ({e.msg})") from None
                line = item.get("text") if isinstance(item, dict) else item
                if not isinstance(line, str) or not line:
                    raise ValueError(f"{flag} {path}: line {i} is neither a string nor an object with \"text\"")
            texts.append(line)
    if not texts:
        raise ValueError(f"{flag} {path} holds no text")
    return texts


def _gate_exit(func):
    """Runs a command; a missed quality threshold prints its one-line reason and exits with 3."""
    def run(args: argparse.Namespace) -> int:
        from slimrt.evaluate import QualityGateError

        try:
            return func(args)
        except QualityGateError as e:
            print(f"slimrt: {e}", file=sys.stderr)
            return QUALITY_EXIT
    return run


def _add_gate_flags(s) -> None:
    s.add_argument("--min-cosine", type=float, default=None, metavar="X",
                   help="encoders: refuse to write (exit 3) unless min embedding cosine vs SRC >= X (e.g. 0.99)")
    s.add_argument("--max-kl", type=float, default=None, metavar="X",
                   help="decoders: refuse to write (exit 3) unless next-token KL vs SRC <= X")
    s.add_argument("--eval-data", metavar="FILE", help="texts for the gate (default: pydoc eval paragraphs)")


def quality_step(args: argparse.Namespace, model, tokenizer, reference_src: str) -> None:
    """After compression, before saving: distil (--distill-steps) then gate (--min-cosine/--max-kl).
    The reference is loaded again from reference_src. Raises QualityGateError when a threshold is missed."""
    steps = getattr(args, "distill_steps", 0) or 0
    min_cos, max_kl = getattr(args, "min_cosine", None), getattr(args, "max_kl", None)
    if not steps and min_cos is None and max_kl is None:
        return
    from slimrt.evaluate import as_runner, check_quality

    ref = as_runner(reference_src)
    if steps:
        import slimrt

        data = _read_texts(args.distill_data) if getattr(args, "distill_data", None) else None
        rec = slimrt.distill(model, ref, data, steps=steps, lr=args.distill_lr, seed=args.seed,
                             tokenizer=tokenizer, progress=not getattr(args, "no_progress", False))
        print(f"slimrt: distilled {steps} steps, loss {rec['loss_before']:.4g} -> {rec['loss_after']:.4g}",
              file=sys.stderr)
    if min_cos is not None or max_kl is not None:
        data = _read_texts(args.eval_data) if getattr(args, "eval_data", None) else None
        rec = check_quality(model, ref, tokenizer, min_cos, max_kl, data,
                            progress=not getattr(args, "no_progress", False))
        shown = {k: round(v, 5) for k, v in rec["measured"].items() if k in ("cos_min", "cos_mean", "kl", "top1")}
        print(f"slimrt: quality gate passed: {shown}", file=sys.stderr)


def _cmd_eval(args: argparse.Namespace) -> int:
    import slimrt

    data = _read_texts(args.data) if args.data else None
    result = slimrt.evaluate(args.checkpoint, args.reference, data, max_tokens=args.max_tokens)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        from slimrt.evaluate import format_table

        print(f"{args.checkpoint} vs {args.reference}")
        print(format_table(result))
    return 0


def _cmd_distill(args: argparse.Namespace) -> int:
    import os

    import slimrt
    from slimrt import checkpoint
    from slimrt.distill import drop_layers
    from slimrt.evaluate import as_runner

    if os.path.exists(args.output) and not args.overwrite:
        raise ValueError(f"output {args.output!r} exists; pass --overwrite to replace it")
    teacher = as_runner(args.src)
    if args.student:
        loaded = checkpoint.load_model(args.student)
        student, tokenizer = loaded.model, loaded.tokenizer or teacher.tokenizer
        if args.drop_layers:
            raise ValueError("--drop-layers builds a student from SRC; it cannot be combined with --student")
    elif args.drop_layers:
        student, tokenizer = drop_layers(teacher.model, args.drop_layers), teacher.tokenizer
        student.slimrt_meta = {"student": {"teacher_layers": teacher.config.num_hidden_layers,
                                           "kept_layers": list(student.slimrt_kept_layers)}}
    else:
        raise ValueError("distill needs a student: --drop-layers SPEC (a shallower copy of SRC) or --student CKPT")
    data = _read_texts(args.data) if args.data else None
    rec = slimrt.distill(student, teacher, data, steps=args.steps, lr=args.lr, seed=args.seed, tokenizer=tokenizer,
                         batch_size=args.batch_size, progress=not args.no_progress)
    print(f"slimrt: distilled {args.steps} steps in {rec['seconds']:.1f} s, loss {rec['loss_before']:.4g} -> "
          f"{rec['loss_after']:.4g}", file=sys.stderr)
    if getattr(student, "slimrt_meta", None) is None:
        student.slimrt_meta = {}
    student.slimrt_meta["distill"] = rec
    student.slimrt_meta.pop("quality", None)  # measured before this training: no longer true
    if args.min_cosine is not None or args.max_kl is not None:
        from slimrt.evaluate import check_quality

        check_quality(student, teacher, tokenizer, args.min_cosine, args.max_kl,
                      _read_texts(args.eval_data) if args.eval_data else None, progress=not args.no_progress)
    checkpoint.save(student, args.output, tokenizer=tokenizer, overwrite=args.overwrite)
    print(f"slimrt: wrote {args.output}")
    return 0


def _add_quality_commands(sub) -> None:
    s = sub.add_parser("eval", help="compare a checkpoint with its reference model on text (cosine / KL ...)")
    s.add_argument("checkpoint", metavar="CKPT", help="slimrt checkpoint directory")
    s.add_argument("--reference", required=True, metavar="SRC", help="the original: HF model dir or slimrt checkpoint")
    s.add_argument("--data", metavar="FILE", help="texts, one per line or .jsonl (default: pydoc eval paragraphs)")
    s.add_argument("--max-tokens", type=int, default=128, help="tokens per text (default 128)")
    s.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    s.set_defaults(func=_cmd_eval)

    s = sub.add_parser("distill", help="train a student (shallower copy or compressed checkpoint) to match SRC")
    s.add_argument("src", metavar="SRC", help="the teacher: a local HF model directory")
    s.add_argument("-o", "--output", required=True, metavar="OUT", help="checkpoint directory to write")
    s.add_argument("--drop-layers", metavar="SPEC",
                   help="build the student from SRC without these layers: 'every-other' or indices, e.g. 0,2,4")
    s.add_argument("--student", metavar="CKPT", help="distil this slimrt checkpoint instead")
    s.add_argument("--steps", type=int, default=100)
    s.add_argument("--lr", type=float, default=1e-4)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--data", metavar="FILE", help="training texts (default: pydoc calibration paragraphs)")
    s.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_gate_flags(s)
    s.set_defaults(func=_gate_exit(_cmd_distill))

    if "compress" in sub.choices:  # the compress command (issue 2) calls quality_step before saving
        s = sub.choices["compress"]
        _add_gate_flags(s)
        s.add_argument("--distill-steps", type=int, default=0, metavar="N",
                       help="after compression, distil the float parts against SRC for N steps")
        s.add_argument("--distill-lr", type=float, default=1e-4)
        s.add_argument("--distill-data", metavar="FILE", help="distillation texts (default: pydoc calibration)")
        s.add_argument("--seed", type=int, default=0, help="distillation seed")
        s.set_defaults(func=_gate_exit(s.get_default("func")))

def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("slimrt: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one readable line for people; --debug for the traceback
        if args.debug:
            raise
        print(f"slimrt: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

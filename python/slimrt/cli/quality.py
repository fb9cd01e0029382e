"""`slimrt eval`, `slimrt distill`, and the quality flags of `slimrt compress`.

--min-cosine / --max-kl gate a compression (a missed threshold writes nothing and exits with 3);
--distill-steps distils the compressed model against its source before the gate.
"""

from __future__ import annotations

import argparse
import json
import sys

from slimrt.cli._texts import _read_texts

QUALITY_EXIT = 3  # a missed --min-cosine / --max-kl: nothing written


def gate_exit(func):
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


def add_compress_flags(s) -> None:
    """The gate and distillation flags of `slimrt compress` (see quality_step)."""
    _add_gate_flags(s)
    s.add_argument("--distill-steps", type=int, default=0, metavar="N",
                   help="after compression, distil the float parts against SRC for N steps")
    s.add_argument("--distill-lr", type=float, default=1e-4)
    s.add_argument("--distill-data", metavar="FILE", help="distillation texts (default: pydoc calibration)")
    s.add_argument("--seed", type=int, default=0, help="distillation seed")


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
    if args.json:  # what was compared, on what, with which settings, beside the numbers
        compared = {"checkpoint": args.checkpoint, "reference": args.reference,
                    "data": args.data or "slimrt.data.pydoc_paragraphs('eval')", "max_tokens": args.max_tokens}
        print(json.dumps({**compared, **result}, sort_keys=True))
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


def add_parser(sub) -> None:
    s = sub.add_parser("eval", help="compare a checkpoint with its reference model on text (cosine / KL ...)")
    s.add_argument("checkpoint", metavar="CKPT", help="slimrt checkpoint directory")
    s.add_argument("--reference", required=True, metavar="SRC", help="the original: HF model dir, .gguf file or slimrt checkpoint")
    s.add_argument("--data", metavar="FILE", help="texts, one per line or .jsonl (default: pydoc eval paragraphs)")
    s.add_argument("--max-tokens", type=int, default=128, help="tokens per text (default 128)")
    s.add_argument("--json", action="store_true",
                   help="one JSON object: what was compared (checkpoint, reference, data, settings) and the numbers")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
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
    s.set_defaults(func=gate_exit(_cmd_distill))

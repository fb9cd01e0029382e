"""The Triton backend from the main test process: packaging, lazy import, info(), the errors a user
meets without triton or without the interpreter, and one subprocess that runs the interpreter tests.

Why a subprocess: TRITON_INTERPRET=1 must be set before the kernels are decorated and
SLIMRT_BACKEND=triton before slimrt registers its ops; the rest of the suite runs in this process
with the default backend (native CPU kernels), so flipping either here would leak into other tests.
"""

import importlib.machinery
import os
import subprocess
import sys
from pathlib import Path

import pytest

import slimrt
from slimrt.ops import cuda
from triton_env import UNDER_INTERPRETER

REPO = Path(__file__).resolve().parents[2]
needs_triton = pytest.mark.skipif(not cuda.triton_found(), reason="triton is not installed")
not_in_subprocess = pytest.mark.skipif(UNDER_INTERPRETER, reason="already inside the interpreter run")


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("SLIMRT_BACKEND", "TRITON_INTERPRET")}
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=300)


@needs_triton
@not_in_subprocess
def test_interpreter_suite():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(SLIMRT_BACKEND="triton", TRITON_INTERPRET="1")
    here = Path(__file__).resolve()
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not gpu",
           f"--ignore={here}", str(here.parent)]
    r = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    tail = (r.stdout + r.stderr)[-6000:]
    assert r.returncode == 0, f"interpreter run failed (rc {r.returncode}):\n{tail}"
    # Nothing may skip there: a skip would mean a test silently left the Triton path.
    assert " passed" in r.stdout and " skipped" not in r.stdout.splitlines()[-1], tail


@not_in_subprocess
def test_import_slimrt_stays_lean_and_kernels_ship_inside_the_package():
    r = _python("import sys, slimrt, slimrt.kernels as k, slimrt.ops.cuda; "
                "print('triton' in sys.modules, k.__name__, list(k.__path__)[0])")
    assert r.returncode == 0, r.stderr
    imported, name, path = r.stdout.split()
    assert imported == "False" and name == "slimrt.kernels", r.stdout
    assert Path(path).name == "kernels" and (Path(path) / "int8_gemm.py").is_file(), path


def test_info_reports_triton_and_gpu():
    import torch

    info = slimrt.info()
    assert info["triton"] is cuda.triton_found()
    assert info["cuda"] is torch.cuda.is_available()
    backend = slimrt.ops.backend()
    if not UNDER_INTERPRETER:
        assert backend["cuda"] == ("triton" if info["triton"] and info["cuda"] else "reference"), backend


def test_a_namespace_dir_named_triton_is_not_triton(monkeypatch):
    # An editable install puts the checkout's parent on sys.path; a sibling directory called
    # `triton` then imports as an empty namespace package. It must not count as Triton.
    spec = importlib.machinery.ModuleSpec("triton", None, is_package=True)
    monkeypatch.setattr(cuda.importlib.util, "find_spec", lambda name: spec)
    assert not cuda.triton_found()


@needs_triton
@not_in_subprocess
def test_backend_triton_without_interpreter_is_a_clear_error():
    code = "import torch, slimrt; print(slimrt.ops.backend()['cpu']); slimrt.ops.quantize_per_token(torch.ones(2, 3))"
    r = _python(code, SLIMRT_BACKEND="triton")
    assert r.returncode != 0 and r.stdout.strip() == "triton", r.stdout + r.stderr
    assert "TRITON_INTERPRET=1" in r.stderr.splitlines()[-1], r.stderr


@not_in_subprocess
def test_backend_triton_without_triton_is_a_clear_error():
    code = ("import sys; sys.modules['triton'] = None\n"  # makes `import triton` fail as if not installed
            "import torch, slimrt; assert slimrt.info()['triton'] is False\n"
            "slimrt.ops.int8_gemm(torch.ones(2, 3, dtype=torch.int8), torch.ones(2, 3, dtype=torch.int8), None, None,"
            " torch.int32)")
    r = _python(code, SLIMRT_BACKEND="triton", TRITON_INTERPRET="1")
    assert r.returncode != 0 and "pip install triton" in r.stderr.splitlines()[-1], r.stderr
    # The default backend keeps working without triton.
    code = code.replace("slimrt.ops.int8_gemm", "print(slimrt.ops.int8_gemm")
    r = _python(code.replace("torch.int32)", "torch.int32).sum().item())"))
    assert r.returncode == 0 and r.stdout.strip() == "12", r.stdout + r.stderr


@not_in_subprocess
def test_slimrt_bench_gpu_without_a_gpu_says_so():
    import torch

    from slimrt import cli

    assert (cli._bench_dir() / "bench_gpu.py").is_file()
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the benchmark would run")
    r = subprocess.run([sys.executable, "-m", "slimrt.cli", "bench", "gpu", "--quick", "--reps", "2"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "no CUDA device found" in r.stderr, r.stdout + r.stderr

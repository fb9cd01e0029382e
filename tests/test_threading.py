"""slimrt's kernels and torch's ops share one OpenMP team, in either import order, with no
environment variable; torch.set_num_threads governs both; concurrent callers get serial results.

Thread counts are read from /proc/self/task (Linux): a second thread pool shows up there as
threads that torch's team does not have.
"""

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import slimrt
from slimrt import _native

pytestmark = pytest.mark.skipif(not _native.available(), reason="needs the native extension")

ENV = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "SLIMRT_THREADING", "OMP_NUM_THREADS")}


def _run(code: str, **env: str) -> str:
    r = subprocess.run([sys.executable, "-c", code], env={**ENV, **env}, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.strip()


@pytest.mark.parametrize("first", ["import torch, slimrt", "import slimrt, torch"])
def test_kernels_run_on_torchs_openmp_runtime_in_either_import_order(first):
    out = _run(f"{first}, os, json\n"
               "print(json.dumps([slimrt.info()['threading'], os.environ.get('OMP_WAIT_POLICY')]))")
    import json

    threading_info, wait_policy = json.loads(out)
    assert threading_info["runtime"] == "openmp", threading_info
    torch_lib = Path(torch.__file__).resolve().parent / "lib"
    assert Path(threading_info["library"]).resolve().parent == torch_lib, threading_info
    assert wait_policy is None, "import slimrt must not set OMP_WAIT_POLICY behind the user's back"


CODE_THREADS = """
import torch, slimrt, os
def nthreads():
    return len(os.listdir('/proc/self/task'))
x = torch.randn(64, 256); w = torch.randint(-127, 128, (96, 256), dtype=torch.int8); s = torch.rand(96) + 0.1
torch.set_num_threads(3)
torch.randn(512, 512) @ torch.randn(512, 512)        # torch's team: main + 2 workers
before = nthreads()
for _ in range(5):
    slimrt.ops.int8_linear(x, w, s)
    slimrt.ops.lowrank_linear(x, torch.randn(96, 8), torch.randn(8, 256))
same = nthreads()
torch.set_num_threads(4)
slimrt.ops.int8_linear(x, w, s)                      # no torch op in between: slimrt asks for 4
grown = nthreads()
print(before, same, grown)
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc/self/task")
def test_no_second_thread_pool_and_set_num_threads_governs_the_kernels():
    before, same, grown = map(int, _run(CODE_THREADS).split())
    assert same == before, f"slimrt's kernels started {same - before} threads of their own beside torch's"
    assert grown == before + 1, (f"after torch.set_num_threads(4) a slimrt kernel alone should grow the shared "
                                 f"team by one thread: {before} -> {grown}")


def test_own_pool_is_still_there_on_request():
    out = _run("import slimrt; print(slimrt.info()['threading']['runtime'])", SLIMRT_THREADING="pool")
    assert out == "pool"
    r = subprocess.run([sys.executable, "-c", "import slimrt; slimrt.info()"],
                       env={**ENV, "SLIMRT_THREADING": "gomp"}, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "SLIMRT_THREADING" in r.stderr, r.stderr[-2000:]


def _workload(seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(33, 200, generator=g)
    w = torch.randint(-127, 128, (67, 200), dtype=torch.int8, generator=g)
    s = torch.rand(67, generator=g) + 0.05
    v, u = torch.randn(9, 200, generator=g), torch.randn(67, 9, generator=g)
    q, k, vv = (torch.randn(1, 2, 70, 16, generator=g) for _ in range(3))
    mask = slimrt.attention.causal_mask(70, 70, block_size=16)
    return lambda: (slimrt.ops.int8_linear(x, w, s), slimrt.ops.int8_weight_only_linear(x, w, s),
                    slimrt.ops.lowrank_linear(x, u, v),
                    slimrt.ops.block_sparse_attention(q, k, vv, mask))


@pytest.mark.parametrize("runtime", ["openmp", "pool"])
def test_two_python_threads_get_the_serial_results(runtime):
    _native.set_threading(runtime)
    try:
        calls = [_workload(seed) for seed in (1, 2)]
        serial = [c() for c in calls]
        failures: list[str] = []

        def worker(i: int) -> None:
            for it in range(60):
                got = calls[i]()
                for a, b in zip(got, serial[i]):
                    if not torch.equal(a, b):
                        failures.append(f"thread {i} iteration {it}: max diff {(a - b).abs().max().item()}")
                        return

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=240)
        assert not any(t.is_alive() for t in threads), f"a thread is stuck ({runtime}): deadlock"
        assert not failures, failures
    finally:
        _native.set_threading("openmp")


def test_results_do_not_depend_on_the_runtime():
    call = _workload(3)
    _native.set_threading("pool")
    try:
        pooled = call()
    finally:
        _native.set_threading("openmp")
    for a, b in zip(call(), pooled):
        assert torch.equal(a, b)

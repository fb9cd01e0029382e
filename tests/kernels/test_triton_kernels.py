"""Kernel-level options of the Triton launchers (slimrt.kernels) that the ops do not reach on CPU:
forced paths, fused epilogue activations, tile configs. Same oracle and tolerances as test_triton_ops.py.
Runs under the interpreter (see triton_env.py)."""

import pytest
import torch

from slimrt.ops import reference as R
from triton_env import interpreter_only

pytestmark = [interpreter_only, pytest.mark.filterwarnings("ignore::RuntimeWarning")]

ACTS = {"relu": torch.relu, "silu": torch.nn.functional.silu, "gelu": torch.nn.functional.gelu,
        "gelu_tanh": lambda y: torch.nn.functional.gelu(y, approximate="tanh")}


@pytest.fixture(scope="module")
def K():
    import slimrt.kernels.int8_gemm
    import slimrt.kernels.int8_weight_only_linear
    import slimrt.kernels.lowrank_linear
    import slimrt.kernels.quantize_per_token

    return slimrt.kernels


def test_kernels_run_interpreted(K):
    from slimrt.kernels import _common

    assert _common.INTERPRET


@pytest.mark.parametrize("block_k", [16, 64])
def test_quantize_two_read_path(K, block_k):
    # Rows longer than the K tile take the absmax pass, then the quantize pass.
    x = torch.randn(9, 250)
    x[3, 200] = float("nan")
    q, s = K.quantize_per_token.quantize_per_token(x, block_k=block_k)
    q_ref, s_ref = R.quantize_per_token(x)
    assert torch.equal(q, q_ref)
    assert torch.equal(s.nan_to_num(-1.0), s_ref.nan_to_num(-1.0))


@pytest.mark.parametrize("m", [1, 16, 17, 40])
@pytest.mark.parametrize("fuse", [True, False])
def test_int8_linear_fused_and_separate_quantization_agree(K, m, fuse):
    x = torch.randn(m, 67) * 3
    x[0, 5] = 1e-3
    w_q, w_s = R.quantize_per_channel(torch.randn(33, 67))
    y = K.int8_gemm.int8_linear(x, w_q, w_s, None, fuse_quant=fuse)
    assert torch.equal(y, R.int8_linear(x, w_q, w_s))


@pytest.mark.parametrize("act", sorted(ACTS))
def test_epilogue_activation(K, act):
    x = torch.randn(7, 33)
    w_q, w_s = R.quantize_per_channel(torch.randn(17, 33))
    bias = torch.randn(17)
    torch.testing.assert_close(K.int8_gemm.int8_linear(x, w_q, w_s, bias, activation=act),
                               ACTS[act](R.int8_linear(x, w_q, w_s, bias)), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(K.int8_weight_only_linear.int8_weight_only_linear(x, w_q, w_s, bias, activation=act),
                               ACTS[act](R.int8_weight_only_linear(x, w_q, w_s, bias)), rtol=1e-5, atol=1e-5)
    a = torch.randint(-128, 128, (5, 33), dtype=torch.int8)
    a_s = torch.rand(5)
    torch.testing.assert_close(K.int8_gemm.int8_gemm(a, w_q, a_s, w_s, torch.float32, bias=bias, activation=act),
                               ACTS[act](R.int8_gemm(a, w_q, a_s, w_s) + bias), rtol=1e-6, atol=1e-6)


def test_unknown_activation_is_an_error(K):
    with pytest.raises(ValueError, match="activation 'tanh'"):
        K.int8_gemm.int8_linear(torch.randn(2, 4), torch.zeros(3, 4, dtype=torch.int8), torch.ones(3),
                                activation="tanh")


@pytest.mark.parametrize("config", [
    {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 16, "GROUP_M": 1},
    {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 64, "GROUP_M": 3},
])
def test_int8_gemm_other_tiles(K, config):
    # Grouped program order with a ragged last group: every tile written once.
    a = torch.randint(-128, 128, (70, 45), dtype=torch.int8)
    b = torch.randint(-128, 128, (50, 45), dtype=torch.int8)
    out = K.int8_gemm.int8_gemm(a, b, out_dtype=torch.int32, config=config)
    assert torch.equal(out, R.int8_gemm(a, b, None, None, torch.int32))


@pytest.mark.parametrize("max_fused_rank", [0, 16])
def test_lowrank_unfused_path(K, max_fused_rank):
    x, u, v, bias = torch.randn(17, 33), torch.randn(7, 20), torch.randn(20, 33), torch.randn(7)
    y = K.lowrank_linear.lowrank_linear(x, u, v, bias, max_fused_rank=max_fused_rank)
    torch.testing.assert_close(y, R.lowrank_linear(x, u, v, bias), rtol=1e-5, atol=1e-4)


def test_lowrank_n_split_covers_every_tile(K):
    # N = 70 -> 5 N tiles of 16 split over up to 4 programs per row tile (CPU "SM count" is 4).
    x, u, v = torch.randn(3, 20), torch.randn(70, 9), torch.randn(9, 20)
    torch.testing.assert_close(K.lowrank_linear.lowrank_linear(x, u, v), R.lowrank_linear(x, u, v),
                               rtol=1e-5, atol=1e-4)


def test_gpu_benchmark_script_runs(capsys, monkeypatch):
    # benchmarks/bench_gpu.py --smoke: every section at toy sizes on CPU tensors (timings meaningless),
    # so the GPU benchmark cannot rot while no GPU runs it.
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_gpu.py"
    monkeypatch.syspath_prepend(str(path.parent))  # as `python benchmarks/bench_gpu.py` has it
    spec = importlib.util.spec_from_file_location("bench_gpu", path)
    bench = sys.modules["bench_gpu"] = importlib.util.module_from_spec(spec)  # dataclasses look the module up
    spec.loader.exec_module(bench)
    assert bench.main(["--smoke"]) == 0
    table = capsys.readouterr().out
    for provider in ("slimrt int8_gemm", "slimrt weight-only int8", "slimrt lowrank_linear (fused)",
                     "slimrt lowrank_linear (two launches)", "slimrt block_sparse_attention", "SDPA boolean mask"):
        assert provider in table, table

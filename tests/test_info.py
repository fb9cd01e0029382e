import json
import os
import subprocess
import sys

import slimrt


def test_info_fields():
    info = slimrt.info()
    for key in ("isa", "isa_available", "num_threads", "version", "torch_version"):
        assert key in info, f"slimrt.info() lacks {key!r}: {info}"
    assert info["isa"] in info["isa_available"]
    assert info["version"] == slimrt.__version__
    if info["native"]:
        # The int8 GEMM kernel: AMX only where the CPU has it and the avx512 path is active.
        from slimrt import _native

        amx = _native.load().amx_available() and info["isa"] == "avx512"
        want = {"amx", "vnni"} if amx else ({"vnni"} if info["isa"] == "avx512" else {info["isa"]})
        assert info["int8_gemm"] in want, info


def test_cli_info_prints_json():
    out = subprocess.run([sys.executable, "-m", "slimrt.cli", "info"], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["version"] == slimrt.__version__


def test_forcing_unknown_isa_is_a_clear_error():
    r = subprocess.run([sys.executable, "-c", "import slimrt; slimrt.ops.int8_gemm"],
                       env={"SLIMRT_ISA": "avx9000", "PATH": ""}, capture_output=True, text=True)
    assert r.returncode != 0 and "SLIMRT_ISA" in r.stderr, r.stderr


def test_import_is_lean():
    code = "import sys, slimrt; print('triton' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"], out.stdout

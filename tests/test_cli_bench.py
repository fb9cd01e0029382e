import pytest

from slimrt import cli


def test_bench_unknown_name_lists_the_known_ones(capsys):
    assert cli.main(["bench", "no_such_bench"]) == 2
    err = capsys.readouterr().err
    assert "no benchmark named 'no_such_bench'" in err and "gemm" in err, err


def test_bench_parser_accepts_quick():
    args = cli.build_parser().parse_args(["bench", "gemm", "--quick"])
    assert args.name == "gemm" and args.quick


def test_bench_gemm_script_resolves():
    pytest.importorskip("slimrt._C")
    assert (cli._bench_dir() / "bench_int8_gemm.py").is_file()

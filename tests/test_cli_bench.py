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


def test_bench_gemm_plot_passes_the_chart_path(monkeypatch, tmp_path):
    import subprocess

    seen = []
    monkeypatch.setattr(subprocess, "run", lambda cmd: seen.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    assert cli.main(["bench", "gemm", "--quick", "--plot"]) == 0
    assert seen[-1][-3:] == ["--quick", "--plot", "int8_gemm_roofline.png"], seen
    assert cli.main(["bench", "gemm", "--plot", str(tmp_path / "r.png")]) == 0
    assert seen[-1][-2:] == ["--plot", str(tmp_path / "r.png")], seen


def test_bench_plot_is_for_gemm_only(capsys):
    assert cli.main(["bench", "lowrank", "--plot"]) == 2
    assert "only the gemm benchmark draws a chart" in capsys.readouterr().err


def test_gemm_roofline_chart_reads_back(tmp_path):
    # The chart from a results summary as bench_int8_gemm.main builds it (no timing here).
    pytest.importorskip("matplotlib")
    import sys

    from matplotlib.image import imread

    sys.path.insert(0, str(cli._bench_dir()))
    import bench_int8_gemm

    provs = ("torch_fp32", "torch_int_mm", "torch_dq", "slimrt_gemm", "slimrt_w8a8", "slimrt_w8")
    summary = [{"shape": (m, 1024, 1024), "ms": {p: 0.05 * m ** 0.5 + 0.02 * i for i, p in enumerate(provs)}}
               for m in (1, 8, 128)]
    path = str(tmp_path / "roof.png")
    bench_int8_gemm.roofline(path, summary, provs, 200e9, 40e9, 800e9, "a test machine")
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 300 and float(img[..., :3].std()) > 0.01

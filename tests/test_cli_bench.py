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

    provs = ("torch_fp32", "torch_int_mm", "torch_dq", "slimrt_gemm", "slimrt_w8a8", "slimrt_w8", "slimrt_w4")
    summary = [{"shape": (m, 1024, 1024), "ms": {p: 0.05 * m ** 0.5 + 0.02 * i for i, p in enumerate(provs)},
                "w4_bytes": 1024 * 1024 * 19 // 32} for m in (1, 8, 128)]
    path = str(tmp_path / "roof.png")
    bench_int8_gemm.roofline(path, summary, provs, 200e9, 40e9, 800e9, "a test machine")
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 300 and float(img[..., :3].std()) > 0.01


def test_gemm_roofline_places_int4_by_the_bytes_it_streams(monkeypatch):
    import sys

    import slimrt.charts

    sys.path.insert(0, str(cli._bench_dir()))
    import bench_int8_gemm

    seen = {}
    monkeypatch.setattr(slimrt.charts, "roofline_chart", lambda path, points, *a, **k: seen.setdefault("p", points))
    provs = ("torch_fp32", "slimrt_w8", "slimrt_w4")
    summary = [{"shape": (1, 4096, 4096), "ms": {p: 1.0 for p in provs}, "w4_bytes": 4096 * 4096 * 19 // 32}]
    bench_int8_gemm.roofline("unused.png", summary, provs, 200e9, 40e9, None, "")
    by = {p["provider"]: p for p in seen["p"]}
    assert set(by) == {"slimrt_w8", "slimrt_w4"}  # fp32 is not an int8 / int4 provider
    # Same ops and time, fewer bytes: w4 sits ~1.7x further right at M = 1, at the same GOP/s.
    assert by["slimrt_w4"]["gops"] == by["slimrt_w8"]["gops"]
    assert 1.6 < by["slimrt_w4"]["intensity"] / by["slimrt_w8"]["intensity"] < 1.7

"""The README's main job runs end to end on the real bundled model (small text count for CI)."""

from slimrt import demo


def test_demo_runs_and_reports_real_numbers(tmp_path, capsys):
    r = demo.run(n_texts=24, out_dir=str(tmp_path / "ckpt"))
    out = capsys.readouterr().out
    assert "semantic search" in out and "slimrt w8a8" in out
    assert r["cos_min"] >= 0.99, f"demo min cosine {r['cos_min']:.4f} below 0.99"
    assert r["bytes_slimrt"] < r["bytes_dense"], r
    assert r["sps_dense"] > 0 and r["sps_slimrt"] > 0
    assert (tmp_path / "ckpt" / "slimrt.json").is_file()

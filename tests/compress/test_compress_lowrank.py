"""slimrt.compress.lowrank: the factorization math, rank selection and the "lowrank" method."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimrt
from slimrt.compress import lowrank as lr
from slimrt.nn import LowRankLinear


def _anisotropic_inputs(t: int, k: int, seed: int = 0) -> torch.Tensor:
    """(t, k) inputs whose channel scales span 3 decades in a random basis: the case where weighting
    the SVD by the activations matters."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(k, k, generator=g, dtype=torch.float64))
    scales = torch.logspace(0, -3, k, dtype=torch.float64)
    return (torch.randn(t, k, generator=g, dtype=torch.float64) * scales) @ q.T


def _out_err(w, u, v, x):
    return ((x @ (w.double() - u.double() @ v.double()).T).norm() / (x @ w.double().T).norm()).item()


def test_activation_aware_beats_plain_svd_at_equal_rank():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(48, 64, generator=g, dtype=torch.float64)
    x = _anisotropic_inputs(2000, 64)
    gram = x.T @ x
    for rank in (4, 8, 16):
        plain = _out_err(w, *lr.decompose(w, None, "svd").factors(rank), x)
        white = _out_err(w, *lr.decompose(w, gram, "whiten").factors(rank), x)
        asvd = _out_err(w, *lr.decompose(w, gram, "asvd").factors(rank), x)
        assert white < 0.7 * plain, f"rank {rank}: whitened output error {white:.4f} vs plain {plain:.4f}"
        assert white <= asvd + 1e-9, f"rank {rank}: whitened {white:.4f} should be optimal, asvd {asvd:.4f}"


def test_whitened_tail_energy_is_the_output_error():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(40, 32, generator=g, dtype=torch.float64)
    x = _anisotropic_inputs(500, 32, seed=3)
    dec = lr.decompose(w, x.T @ x, "whiten")
    assert dec.note == "whitened SVD (cholesky)"
    for rank in (1, 5, 20):
        measured = _out_err(w, *dec.factors(rank), x)
        assert abs(measured - dec.rel_error(rank)) < 1e-4, (rank, measured, dec.rel_error(rank))


def test_full_rank_whitened_reconstructs_the_weight():
    w = torch.randn(24, 16, dtype=torch.float64)
    x = _anisotropic_inputs(200, 16)
    u, v = lr.decompose(w, x.T @ x, "whiten").factors(16)
    assert (u.double() @ v.double() - w).abs().max() < 1e-4


def test_rank_deficient_gram_does_not_crash_and_stays_useful():
    g = torch.Generator().manual_seed(4)
    w = torch.randn(32, 64, generator=g, dtype=torch.float64)
    x = torch.randn(20, 64, generator=g, dtype=torch.float64)  # 20 tokens < K = 64: rank-20 Gram
    x[:, 5] = 0  # and a dead channel
    dec = lr.decompose(w, x.T @ x, "whiten")
    assert "damped" in dec.note or "eigh" in dec.note, dec.note
    u, v = dec.factors(8)
    assert torch.isfinite(u).all() and torch.isfinite(v).all()
    plain = _out_err(w, *lr.decompose(w, None, "svd").factors(8), x)
    assert _out_err(w, u, v, x) < plain, "damped whitening should still beat plain SVD on the calibration inputs"


def test_degenerate_grams():
    w = torch.randn(8, 6, dtype=torch.float64)
    dec = lr.decompose(w, torch.zeros(6, 6), "whiten")
    assert dec.note.startswith("plain SVD"), dec.note
    indefinite = -torch.eye(6, dtype=torch.float64)
    indefinite[0, 0] = 1.0
    u, v = lr.decompose(w, indefinite, "whiten").factors(3)  # eigen-clamp fallback
    assert torch.isfinite(u).all() and torch.isfinite(v).all()
    bad = torch.eye(6)
    bad[2, 2] = float("nan")
    with pytest.raises(ValueError, match="Gram"):
        lr.decompose(w, bad, "whiten")
    with pytest.raises(ValueError, match="gram is"):
        lr.decompose(w, torch.eye(5), "whiten")
    w_nan = w.clone()
    w_nan[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        lr.decompose(w_nan, None, "svd")


def test_rank_for_energy_and_dense_rule():
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])
    assert lr.rank_for_energy(s, 0.5) == 1  # 9/14 kept
    assert lr.rank_for_energy(s, 0.9) == 2  # 13/14
    assert lr.rank_for_energy(s, 1.0) == 3
    assert lr.max_useful_rank(4, 4) == 1 and lr.max_useful_rank(768, 3072) == 614
    assert lr.dense_reason(768, 3072, 614) is None
    assert "not fewer than the dense" in lr.dense_reason(768, 3072, 615)


def _spectra():
    g = torch.Generator().manual_seed(5)
    return {
        "fast": (torch.logspace(0, -4, 64, dtype=torch.float64), 64, 96),  # energy in a few directions
        "slow": (torch.linspace(1, 0.5, 64, dtype=torch.float64), 64, 128),  # flat spectrum
        "mid": (torch.rand(48, generator=g, dtype=torch.float64).sort(descending=True).values, 48, 48),
    }


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5, 0.9])
def test_budget_is_met_and_spent(ratio):
    layers = _spectra()
    ranks = lr.allocate_ranks(layers, ratio)
    dense_total = sum(n * k for _, n, k in layers.values())
    used = sum(n * k if r is None else r * (n + k) for r, (_, n, k) in zip(ranks.values(), layers.values()))
    assert used <= ratio * dense_total, f"ratio {ratio}: {used} weights > budget {ratio * dense_total}"
    biggest_step = max(n * k for _, n, k in layers.values())
    assert used >= ratio * dense_total - biggest_step, f"ratio {ratio}: only {used} of the budget used"
    assert all(r is None or r >= 1 for r in ranks.values())


def test_greedy_allocation_is_near_the_exhaustive_optimum():
    import itertools

    g = torch.Generator().manual_seed(6)
    layers = {f"l{i}": (torch.rand(8, generator=g, dtype=torch.float64).pow(3 * i + 1).sort(descending=True).values,
                        n, k) for i, (n, k) in enumerate([(8, 12), (10, 8), (12, 16)])}
    rel = {nm: (s ** 2 / (s ** 2).sum()).tolist() for nm, (s, _, _) in layers.items()}

    def err(nm, r):
        return 0.0 if r is None else sum(rel[nm][r:])

    def cost(nm, r):
        _, n, k = layers[nm]
        return n * k if r is None else r * (n + k)

    dense_total = sum(n * k for _, n, k in layers.values())
    for ratio in (0.4, 0.6, 0.8):
        options = [[*range(1, lr.max_useful_rank(n, k) + 1), None] for _, n, k in layers.values()]
        best = min(sum(err(nm, r) for nm, r in zip(layers, combo)) for combo in itertools.product(*options)
                   if sum(cost(nm, r) for nm, r in zip(layers, combo)) <= ratio * dense_total)
        ranks = lr.allocate_ranks(layers, ratio)
        got = sum(err(nm, r) for nm, r in ranks.items())
        largest_step = max(max(v) for v in rel.values())
        assert got <= best + largest_step, f"ratio {ratio}: greedy error {got:.4f}, optimum {best:.4f}, {ranks}"


def test_uniform_allocation_meets_the_ratio_in_every_layer():
    layers = _spectra()
    for ratio in (0.2, 0.5, 0.9):
        for name, r in lr.uniform_ranks(layers, ratio).items():
            _, n, k = layers[name]
            assert r * (n + k) <= max(ratio * n * k, n + k), (ratio, name, r)
            assert (r + 1) * (n + k) > ratio * n * k or r == min(n, k), (ratio, name, r)


def test_budget_too_small_is_an_error():
    with pytest.raises(ValueError, match="rank 1 in every selected layer"):
        lr.allocate_ranks(_spectra(), 0.01)


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(64, 96)
        self.fc2 = nn.Linear(96, 64)
        self.small = nn.Linear(4, 4)
        self.proj = nn.Linear(64, 4)
        self.tiny = nn.Linear(2, 2)

    def forward(self, x):
        h = self.fc2(torch.relu(self.fc1(x)))
        return self.proj(h) + self.small(h[..., :4]) + nn.functional.pad(self.tiny(h[..., :2]), (0, 2))


def _calib():
    return [_anisotropic_inputs(64, 64, seed=s).float().reshape(4, 16, 64) for s in range(3)]


def test_compress_with_the_preset_swaps_and_reports():
    model = _Tiny()
    x = _calib()[0]
    with torch.no_grad():
        ref = model(x)
    slimrt.compress(model, "lowrank-0.5", calibration=_calib(), progress=False)
    assert isinstance(model.fc1, LowRankLinear) and isinstance(model.fc2, LowRankLinear)
    assert isinstance(model.tiny, nn.Linear), "a 2x2 layer cannot be made smaller by factors"
    assert "not fewer than the dense" in model.slimrt_meta["fallbacks"]["tiny"]
    assert set(model.slimrt_meta["fallbacks"]) <= {"tiny", "small", "proj"}
    sel = [r for r in model.slimrt_meta["layers"] if r["method"] == "lowrank"]
    assert all(r["kernel"].startswith("lowrank_linear[") and r["rank"] >= 1 for r in sel)
    with torch.no_grad():
        y = model(x)
    assert torch.isfinite(y).all()
    assert ((y - ref).norm() / ref.norm()).item() < 0.9
    assert "lowrank" in slimrt.report(model, echo=False)


def test_lowrank_plus_w8_stores_int8_factors():
    model = _Tiny()
    slimrt.compress(model, "lowrank-0.5+w8", calibration=_calib(), progress=False)
    assert isinstance(model.fc1, LowRankLinear) and model.fc1.quantized and model.fc1.mode == "w8"
    assert type(model.tiny).__name__ == "Int8Linear", "the layer kept dense by lowrank is quantized by w8"


def test_fixed_rank_and_plain_svd_without_calibration():
    model = _Tiny()
    recipe = slimrt.Recipe(methods=("lowrank",), params={"lowrank": {"rank": 8, "method": "svd"}})
    slimrt.compress(model, recipe, progress=False)
    assert model.fc1.rank == 8 and model.fc2.rank == 8
    # proj is (N, K) = (4, 64): rank min(8, 4) = 4 needs 272 numbers >= 256 dense, so it stays dense.
    assert isinstance(model.proj, nn.Linear) and isinstance(model.small, nn.Linear)
    assert "272" in model.slimrt_meta["fallbacks"]["proj"]


def test_uniform_allocation_through_the_recipe():
    model = _Tiny()
    recipe = slimrt.Recipe(methods=("lowrank",), params={"lowrank": {"ratio": 0.5, "allocation": "uniform"}})
    slimrt.compress(model, recipe, calibration=_calib(), progress=False)
    assert model.fc1.rank == int(0.5 * 64 * 96 / 160) and model.fc2.rank == model.fc1.rank


def test_activation_aware_method_needs_calibration():
    with pytest.raises(ValueError, match="needs calibration data"):
        slimrt.compress(_Tiny(), "lowrank-0.5", progress=False)
    with pytest.raises(ValueError, match="lowrank.method"):
        slimrt.Recipe(methods=("lowrank",), params={"lowrank": {"method": "magic"}})


@pytest.mark.parametrize("preset", ["lowrank-0.5", "lowrank-0.5+w8"])
def test_checkpoint_round_trip(tmp_path, preset):
    from slimrt import checkpoint

    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 64))
    slimrt.compress(model, preset, calibration=_calib(), progress=False)
    assert isinstance(model[0], LowRankLinear)
    checkpoint.save(model, tmp_path / "ck")
    skeleton = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 64))
    loaded = checkpoint.load_model(tmp_path / "ck", model=skeleton).model
    assert isinstance(loaded[0], LowRankLinear) and loaded[0].rank == model[0].rank
    x = torch.randn(5, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_checkpoint_whose_factors_disagree_with_the_rank_is_refused(tmp_path):
    import json

    from slimrt import checkpoint

    model = nn.Sequential(nn.Linear(64, 96))
    slimrt.compress(model, slimrt.Recipe(methods=("lowrank",), params={"lowrank": {"rank": 8, "method": "svd"}}),
                    progress=False)
    checkpoint.save(model, tmp_path / "ck")
    meta_path = next(p for p in (tmp_path / "ck").iterdir() if p.suffix == ".json")
    meta = json.loads(meta_path.read_text())
    meta["modules"]["0"]["config"]["rank"] = 9
    meta_path.write_text(json.dumps(checkpoint.format.stamp(meta)))  # the digest matches the edit
    with pytest.raises(Exception, match=r"(?i)rank|shape") as e:
        checkpoint.load_model(tmp_path / "ck", model=nn.Sequential(nn.Linear(64, 96)))
    assert "0" in str(e.value)

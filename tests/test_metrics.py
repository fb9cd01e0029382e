import math

import pytest
import torch

from slimrt import metrics


def test_cosine_stats_hand_values():
    ref = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    cmp = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    s = metrics.cosine_stats(ref, cmp)
    assert s["cos_min"] == pytest.approx(1 / math.sqrt(2))
    assert s["cos_mean"] == pytest.approx((1 / math.sqrt(2) + 1) / 2)


def test_retrieval_agreement_hand_values():
    # ref neighbours (k=1): 0->1, 1->0, 2->1. Swapping rows 1 and 2 gives cmp neighbours 0->2, 1->2,
    # 2->0: no row keeps its neighbour.
    ref = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    assert metrics.retrieval_agreement(ref, ref, k=1) == 1.0
    cmp = ref[[0, 2, 1]]
    a = metrics.retrieval_agreement(ref, cmp, k=1)
    assert a == pytest.approx(0.0)
    with pytest.raises(ValueError, match="k=3"):
        metrics.retrieval_agreement(ref, ref, k=3)


def test_spearman_hand_values():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert metrics.spearman(x, x * 10 + 1) == pytest.approx(1.0)
    assert metrics.spearman(x, -x) == pytest.approx(-1.0)
    # ranks of y = [1, 3, 2, 4]: d = [0, -1, 1, 0], rho = 1 - 6*2/(4*15) = 0.8
    assert metrics.spearman(x, torch.tensor([10.0, 30.0, 20.0, 40.0])) == pytest.approx(0.8)
    # ties get averaged ranks
    assert metrics.spearman(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([1.0, 2.0, 3.0])) == pytest.approx(
        0.8660254, rel=1e-6
    )


def test_kl_and_top1_hand_values():
    p = torch.log(torch.tensor([[0.5, 0.5]]))
    q = torch.log(torch.tensor([[0.25, 0.75]]))
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert metrics.kl_divergence(p, q) == pytest.approx(expected)
    assert metrics.kl_divergence(p, p) == pytest.approx(0.0, abs=1e-12)
    assert metrics.top1_agreement(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([[0.0, 2.0], [0.0, 1.0]])) == 0.5


def test_perplexity_uniform_is_vocab_size():
    logits = torch.zeros(2, 5, 7)
    ids = torch.randint(0, 7, (2, 5))
    assert metrics.perplexity(logits, ids) == pytest.approx(7.0)
    with pytest.raises(ValueError):
        metrics.perplexity(logits, ids[:, :3])


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.cosine_stats(torch.zeros(2, 3), torch.zeros(3, 3))

from __future__ import annotations

import json
import math

import pytest

from qac.errors import InputError
from qac.metrics import (
    CompletionMetrics,
    percentiles,
    reciprocal_rank,
    sentence_bleu,
    success_at,
)


def test_reciprocal_rank_and_success() -> None:
    cands = ["a", "b", "c", "b"]
    assert reciprocal_rank(cands, "a") == 1.0
    assert reciprocal_rank(cands, "b") == 0.5
    assert reciprocal_rank(cands, "c") == pytest.approx(1 / 3)
    assert reciprocal_rank(cands, "c", k=2) == 0.0
    assert reciprocal_rank(cands, "z") == 0.0
    assert reciprocal_rank([], "a") == 0.0
    assert success_at(cands, "c", 3) and not success_at(cands, "c", 2)
    assert not success_at(cands, "a", 0)


@pytest.mark.parametrize("cand, ref, want", [
    ("the cat sat on the mat", "the cat sat on the mat", 1.0),
    # c=2 < r=3: BP = exp(1 - 3/2); p1 = 2/2, p2 = (1+1)/(1+1), p3 = p4 = (0+1)/(0+1)
    ("the cat", "the cat sat", math.exp(-0.5)),
    # p1 = 1/3 (clipped), p2 = (0+1)/(2+1), p3 = (0+1)/(1+1), p4 = (0+1)/(0+1); BP = 1
    ("the the the", "the cat", (1 / 3 * 1 / 3 * 1 / 2) ** 0.25),
    # c=4 > r=3, BP = 1; p1 = 3/4, p2 = (1+1)/(3+1), p3 = (0+1)/(2+1), p4 = (0+1)/(1+1)
    ("new york pizza hut", "pizza hut new", (3 / 4 * 2 / 4 * 1 / 3 * 1 / 2) ** 0.25),
    ("cheap flights", "hotels", 0.0),
    ("", "hotels", 0.0),
    ("hotels", "", 0.0),
])
def test_sentence_bleu_hand_computed(cand: str, ref: str, want: float) -> None:
    assert sentence_bleu(cand, ref) == pytest.approx(want, rel=1e-12)


def test_sentence_bleu_max_n() -> None:
    # max_n = 2: p1 = 2/3, p2 = (1+1)/(2+1); c=3 > r=2
    assert sentence_bleu("a b c", "a b", max_n=2) == pytest.approx((2 / 3 * 2 / 3) ** 0.5)
    with pytest.raises(InputError):
        sentence_bleu("a", "a", max_n=0)


def test_completion_metrics_summary() -> None:
    m = CompletionMetrics(k=10)
    m.add(1, "seen", ["a", "b"], "b")          # rr 1/2
    m.add(1, "unseen", ["x y", "q"], "x z")    # miss; top-1 BLEU b below
    m.add(2, "seen", ["c"], "c")               # rr 1
    m.add(2, "seen", [], "d")                  # miss, no candidate: bleu 0
    s = m.summary()
    # bleu("x y", "x z"): c = r = 2, BP = 1, p1 = 1/2, p2 = (0+1)/(1+1), p3 = p4 = 1
    b = (1 / 2 * 1 / 2) ** 0.25
    assert s["k"] == 10
    assert s["overall"] == pytest.approx({
        "count": 4, "mrr@10": 1.5 / 4, "success@1": 1 / 4, "success@10": 2 / 4,
        "bleu@1": (0 + b + 1 + 0) / 4, "mrr_variants@10": 1.5 / 4})
    assert s["by_length"][1] == pytest.approx({
        "count": 2, "mrr@10": 0.25, "success@1": 0.0, "success@10": 0.5, "bleu@1": b / 2,
        "mrr_variants@10": 0.25})
    assert s["by_group"]["seen"]["mrr@10"] == pytest.approx(1.5 / 3)
    assert s["by_group"]["unseen"]["count"] == 1
    assert s["by_group_length"]["seen"][2]["success@1"] == 0.5
    assert list(s["by_group_length"]["unseen"]) == [1]
    json.dumps(s)  # reports are JSON


def test_a_near_duplicate_of_the_target_counts_only_in_mrr_variants() -> None:
    m = CompletionMetrics(k=10)
    m.add(1, None, ["wood", "woot", "w"], "woot.com")       # "woot" is its variant: 1/2
    m.add(1, None, ["woot.com", "woot"], "woot")            # exact at 2, a variant at 1
    m.add(1, None, ["dress up", "dressup"], "dressup")      # exact at 2, a variant at 1
    m.add(1, None, ["wood"], "woot")                        # not a variant: a miss
    o = m.summary()["overall"]
    assert o["mrr@10"] == pytest.approx((0 + 0.5 + 0.5 + 0) / 4)
    assert o["mrr_variants@10"] == pytest.approx((0.5 + 1 + 1 + 0) / 4)


def test_completion_metrics_k_and_merge() -> None:
    a, b = CompletionMetrics(k=2), CompletionMetrics(k=2)
    a.add(3, None, ["x", "y", "t"], "t")       # rank 3 > k: a miss
    b.add(3, None, ["t"], "t")
    a.merge(b)
    s = a.summary()
    assert s["overall"]["count"] == 2 and a.count == 2
    assert s["overall"]["mrr@2"] == 0.5 and s["overall"]["success@2"] == 0.5
    assert s["by_group"] == {} and s["by_length"][3]["count"] == 2
    with pytest.raises(InputError):
        a.merge(CompletionMetrics(k=10))
    with pytest.raises(InputError):
        a.add(-1, None, [], "t")
    assert math.isnan(CompletionMetrics().summary()["overall"]["mrr@10"])


def test_percentiles() -> None:
    p = percentiles([float(i) for i in range(1, 101)])
    assert p["n"] == 100 and p["mean"] == 50.5 and p["max"] == 100.0
    assert p["p50"] == pytest.approx(50.5) and p["p95"] == pytest.approx(95.05)
    assert p["p99"] == pytest.approx(99.01)
    assert percentiles([])["n"] == 0 and math.isnan(percentiles([])["p99"])

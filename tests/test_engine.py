"""The engine's search path (Engine.search -> TextSearch -> qac_predict_text)."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import scipy.sparse as sp

from qac import _kernel
from qac.engine import Engine, EngineConfig
from qac.errors import InputError, KernelError
from qac.features import BlockConfig

TEXTS = [f"{w} {v}" for w in ("golf", "google", "goose", "gold", "grape", "game")
         for v in ("club", "maps", "down", "price", "juice", "over", "ball")]


@pytest.fixture(scope="module")
def engine() -> Engine:
    Y = sp.csr_matrix((np.ones(len(TEXTS), np.float32), np.arange(len(TEXTS)),
                       np.arange(len(TEXTS) + 1)), shape=(len(TEXTS), len(TEXTS)))
    cfg = EngineConfig(blocks=(BlockConfig(kind="char", ngram_range=(1, 3)),),
                       branching=4, max_leaf_size=4)
    return Engine.fit(TEXTS, Y, cfg)


def test_a_refused_huge_k_leaves_search_safe(engine: Engine) -> None:
    """Issue 15 D1, the engine path: k=10, then k=2**62 (refused), then k=5000."""
    assert len(engine.search("goo", k=10)[0]) == 10
    with pytest.raises(InputError, match="2\\*\\*24"):
        engine.search("goo", k=2**62)
    ids, scores = engine.search("g", k=5000)
    gc.collect()
    assert 10 < len(ids) <= len(TEXTS) and len(set(ids)) == len(ids)
    assert scores == sorted(scores, reverse=True)


def test_text_search_records_only_what_it_allocated(engine: Engine) -> None:
    """Below the edge checks: a TextSearch whose buffer allocation fails keeps its old
    buffers and their true size, and C refuses a topk beyond the buffer it is given."""
    search = _kernel.TextSearch(engine.vectorizer.handle, engine.model)
    assert len(search("goo", None, 10, 10, 0, engine.n_labels)[0]) == 10
    with pytest.raises((OverflowError, MemoryError)):
        search("goo", None, 2**62, 10, 0, engine.n_labels)
    ids, _ = search("g", None, 5000, 10, 0, engine.n_labels)
    gc.collect()
    assert 10 < len(ids) <= len(TEXTS)
    b = search._buffers(1)
    assert b.topk >= 5000
    ffi, lib = _kernel.ffi, _kernel.lib
    small_ids, small_scores = ffi.new("int32_t[]", 4), ffi.new("float[]", 4)
    t = b"g"
    rc = lib.qac_predict_text(
        engine.vectorizer.handle, engine.model.handle, engine.model.scratch_for_thread(10, 8),
        t, len(t), ffi.NULL, 0, 10, 8, 0, engine.n_labels, b.feat_idx, b.feat_val,
        search._feat_cap, small_ids, small_scores, 4, b.n)
    assert rc == lib.QAC_E_CAPACITY
    with pytest.raises(KernelError, match="too small"):
        _kernel.check(rc, "qac_predict_text")


def test_bad_k_and_beam_are_input_errors(engine: Engine) -> None:
    for kw in ({"k": 0}, {"k": -3}, {"beam": 0}, {"k": 2.5}, {"beam": 2**25}):
        with pytest.raises(InputError):
            engine.search("goo", **kw)  # type: ignore[arg-type]


def test_label_power_is_validated_and_saved() -> None:
    for bad in (0, -1.0, float("inf"), True, "2"):
        with pytest.raises(InputError, match="label_power"):
            EngineConfig(blocks=(BlockConfig(kind="char"),), label_power=bad)  # type: ignore[arg-type]
    cfg = EngineConfig(blocks=(BlockConfig(kind="char"),), label_power=2.0)
    assert EngineConfig.from_dict(cfg.to_dict()) == cfg

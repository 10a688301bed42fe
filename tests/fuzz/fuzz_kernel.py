"""Fuzz target: the C kernel through its cffi entry points, on a tiny trained model.

Every entry point the per-keystroke and batch paths use is driven with fuzzed
arguments: the answerer (``Completer.complete``: prefix, previous query, history,
session, k, time), the label range, the featurizer (one row and batches), the beam
search (sparse rows, beam, k, label-id range) one at a time and in batches, and
retrieval. Each must answer or raise InputError; anything else is a finding, and so
is a crash (run with ``run.py --sanitize`` the kernel is built with ASan + UBSan).
"""

from __future__ import annotations

import contextlib
import math
import sys
from typing import Any

from _harness import Input, fuzz_main, import_qac, model_cache, small_models

m: dict[str, Any] = {}


def setup() -> None:
    def load() -> dict[str, Any]:
        import numpy as np
        import scipy.sparse as sp

        from qac.complete import Completer
        from qac.errors import InputError
        from qac.history import Past
        from qac.retrieve import Retriever
        return {"np": np, "sp": sp, "Completer": Completer, "Retriever": Retriever,
                "InputError": InputError, "Past": Past}

    m.update(import_qac(load))
    dirs = small_models(model_cache())
    m["c"] = m["Completer"].load(dirs["completer"])
    m["r"] = m["Retriever"].load(dirs["retriever"])


def _text(inp: Input) -> str | bytes:
    raw = inp.chunk(48)
    return raw if inp.byte() & 1 else raw.decode("utf-8", "replace")


def _int(inp: Input) -> int:
    """Sizes and ids near the edges: small, negative, just past a limit, huge."""
    return int(inp.choice([0, 1, 2, 3, 5, 10, 50, 999, 1000, 1001, 1 << 24, (1 << 24) + 1,
                           1 << 31, 1 << 62, -1, -(1 << 31), inp.int(-100, 100)]))


def one_input(data: bytes) -> None:
    if not m:
        setup()
    np, c, r, InputError = m["np"], m["c"], m["r"], m["InputError"]
    inp = Input(data)
    op = inp.byte() % 8
    with contextlib.suppress(InputError):  # a clean error is an answer too
        if op == 0:
            history = [m["Past"](_text(inp), inp.int(-5, 1 << 40), inp.float())
                       if inp.byte() & 1 else _text(inp) for _ in range(inp.byte() % 6)]
            session = [(_text(inp), inp.float()) for _ in range(inp.byte() % 4)]
            got = c.complete(_text(inp), previous=_text(inp) if inp.byte() & 1 else None,
                             k=_int(inp), history=history, session=session,
                             now=inp.float() if inp.byte() & 1 else None)
            for s in got:
                assert isinstance(s.text, str) and s.text and math.isfinite(s.score), s
        elif op == 1:
            raw = inp.chunk(48)
            lo, hi = c.answerer.label_range(raw)
            assert 0 <= lo <= hi <= len(c.labels), (raw, lo, hi)
        elif op == 2:
            texts = [t if isinstance(t, str) else t.decode("utf-8", "replace")
                     for t in (_text(inp) for _ in range(1 + inp.byte() % 4))]
            X = c.engine.vectorizer.transform(texts, [None] * len(texts), threads=1)
            assert X.shape[0] == len(texts)
        elif op == 3:
            n = c.engine.vectorizer.n_features
            nnz = inp.byte() % 12
            idx = np.array([inp.int(-3, n + 3) for _ in range(nnz)], dtype=np.int32)
            if inp.byte() & 1:
                idx = np.unique(idx)
            val = np.array([inp.float() for _ in range(len(idx))], dtype=np.float32)
            ids, scores = c.engine.model.predict_one(
                idx, val, beam=_int(inp), topk=_int(inp), lo=_int(inp),
                hi=_int(inp) if inp.byte() & 1 else None)
            assert len(ids) == len(scores)
        elif op == 4:
            n = c.engine.vectorizer.n_features
            rows = 1 + inp.byte() % 4
            indptr = np.zeros(rows + 1, dtype=np.int64)
            idx: list[int] = []
            for i in range(rows):
                cols = sorted({inp.int(0, n - 1) for _ in range(inp.byte() % 6)})
                idx += cols
                indptr[i + 1] = len(idx)
            vals = np.array([inp.float() for _ in idx], dtype=np.float32)
            X = m["sp"].csr_matrix((vals, np.array(idx, dtype=np.int32), indptr),
                                   shape=(rows, n))
            ids, _ = c.engine.model.predict(X, beam=_int(inp), topk=_int(inp) % 64 + 1,
                                            threads=1 + inp.byte() % 2)
            assert ids.shape[0] == rows
        elif op == 5:
            got = r.search(_text(inp), k=_int(inp))
            assert all(isinstance(i, str) for i, _ in got)
        elif op == 6:
            text = _text(inp)
            text = text if isinstance(text, str) else text.decode("utf-8", "replace")
            c.engine.search(text, context=None, k=_int(inp), beam=_int(inp),
                            lo=_int(inp), hi=_int(inp) if inp.byte() & 1 else None)
        else:
            c.pool(_text(inp) if inp.byte() & 1 else "", previous=None)


if __name__ == "__main__":
    fuzz_main(setup, one_input)
    sys.exit(0)

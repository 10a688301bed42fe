"""PECOS (libpecos XR-Linear) side of the qac benchmark; run by ``sim/bench_xmr.py``.

Runs inside the separate ``.bench-pecos`` venv (libpecos 1.2.8 needs numpy<2, scipy<1.14),
so it imports nothing from qac. It reads the data directory that ``bench_xmr.py prepare``
wrote (same X, Y and cluster chain for both systems) and writes one JSON per step.

Commands (each one is its own process, so the parent can read its peak RSS):

- ``vectorize``: fit PECOS's tfidf (word 1-2 + char_wb 3) on the train texts and write
  ``X_trn.npz`` / ``X_tst.npz`` (fallback shared features while qac's Vectorizer is absent).
- ``fit-vectorizer``: only fit and save PECOS's tfidf (text-in timing on qac features).
- ``index``: PECOS's own indexer (PIFA + hierarchical k-means) -> ``chain/`` (fallback tree).
- ``train``: ``XLinearModel.train`` with PECOS defaults on the shared X/Y/chain; saves the
  model directory. ``--text-model`` also fits PECOS's own vectorizer on the train texts and
  trains a second model on its own features (the genuine "text in" pipeline).
- ``eval``: predict-only C++ model; batch top-k on the whole test matrix; single-row
  latency (threads=1, one call per query); text-in latency (vectorizer + predict).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import scipy.sparse as smat

TFIDF_CONFIG = {
    "type": "tfidf",
    "kwargs": {
        "base_vect_configs": [
            {"ngram_range": [1, 2], "analyzer": "word", "truncate_length": -1},
            {"ngram_range": [3, 3], "analyzer": "char_wb", "truncate_length": -1},
        ],
        "norm_p": 2,
    },
}


def log(msg: str) -> None:
    print(f"[pecos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def read_texts(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return f.read().split("\n")[:-1]


def load_csr(path: str) -> smat.csr_matrix:
    m = smat.load_npz(path).tocsr().astype(np.float32)
    m.sort_indices()
    return m


def load_chain(data: str) -> list[smat.csc_matrix]:
    with open(os.path.join(data, "chain", "config.json"), encoding="utf-8") as f:
        n = json.load(f)["len"]
    return [
        smat.load_npz(os.path.join(data, "chain", f"C{i}.npz")).tocsc().astype(np.float32)
        for i in range(n)
    ]


def du_bytes(path: str) -> int:
    out = subprocess.run(["du", "-sb", path], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def write_json(path: str, obj: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def fit_vectorizer(texts: list[str], threads: int):  # noqa: ANN201 - pecos type
    from pecos.utils.featurization.text.vectorizers import Vectorizer

    cfg = json.loads(json.dumps(TFIDF_CONFIG))
    for b in cfg["kwargs"]["base_vect_configs"]:
        b["threads"] = threads
    cfg["kwargs"]["threads"] = threads
    return Vectorizer.train(texts, config=cfg)


def cmd_vectorize(a: argparse.Namespace) -> None:
    trn = read_texts(os.path.join(a.data, "train_texts.txt"))
    tst = read_texts(os.path.join(a.data, "test_texts.txt"))
    t0 = time.perf_counter()
    vec = fit_vectorizer(trn, a.threads)
    X_trn = vec.predict(trn, threads=a.threads).astype(np.float32)
    X_tst = vec.predict(tst, threads=a.threads).astype(np.float32)
    secs = time.perf_counter() - t0
    smat.save_npz(os.path.join(a.data, "X_trn.npz"), X_trn.tocsr())
    smat.save_npz(os.path.join(a.data, "X_tst.npz"), X_tst.tocsr())
    vdir = os.path.join(a.data, "pecos_vectorizer")
    shutil.rmtree(vdir, ignore_errors=True)
    vec.save(vdir)
    log(f"vectorized: X_trn {X_trn.shape} nnz {X_trn.nnz}, X_tst {X_tst.shape} in {secs:.1f}s")
    write_json(a.out, {"seconds": secs, "n_features": int(X_trn.shape[1])})


def cmd_fit_vectorizer(a: argparse.Namespace) -> None:
    """Fit PECOS tfidf on the train texts only (for text-in timing on non-PECOS features)."""
    t0 = time.perf_counter()
    vec = fit_vectorizer(read_texts(os.path.join(a.data, "train_texts.txt")), a.threads)
    secs = time.perf_counter() - t0
    vdir = os.path.join(a.data, "pecos_vectorizer")
    shutil.rmtree(vdir, ignore_errors=True)
    vec.save(vdir)
    log(f"fitted PECOS tfidf in {secs:.1f}s")
    write_json(a.out, {"seconds": secs})


def cmd_index(a: argparse.Namespace) -> None:
    from pecos.xmc import Indexer, LabelEmbeddingFactory

    X = load_csr(os.path.join(a.data, "X_trn.npz"))
    Y = load_csr(os.path.join(a.data, "Y_trn.npz"))
    t0 = time.perf_counter()
    Z = LabelEmbeddingFactory.create(Y, X, method="pifa")
    chain = Indexer.gen(
        Z,
        indexer_type="hierarchicalkmeans",
        nr_splits=a.branching,
        max_leaf_size=a.max_leaf_size,
        seed=a.seed,
        threads=a.threads,
    )
    secs = time.perf_counter() - t0
    chain.save(os.path.join(a.data, "chain"))
    sizes = [int(c.shape[0]) for c in chain]
    log(f"pecos indexer: layer sizes {sizes} in {secs:.1f}s")
    write_json(a.out, {"seconds": secs, "layer_sizes": sizes})


def _relevance(data: str, mode: str):  # noqa: ANN202
    """PECOS's cost-sensitive input: R with Y's pattern, each positive's cost multiplier
    from its click count (``R_trn.npz``), the same function of the count qac uses."""
    if mode == "off":
        return None
    R = load_csr(os.path.join(data, "R_trn.npz"))
    c = np.maximum(R.data.astype(np.float64), 1.0)
    R.data = {"log": 1.0 + np.log(c), "sqrt": np.sqrt(c), "linear": c}[mode].astype(np.float32)
    return R.tocsc()


def _train(X, Y, chain, threads: int, R=None):  # noqa: ANN001, ANN202
    from pecos.xmc.xlinear.model import XLinearModel

    return XLinearModel.train(
        X,
        Y.tocsc(),
        C=chain,
        R=R,
        # with R: PECOS's cost-sensitive learning, parents' relevance summed from their
        # labels' ("induce")
        rel_mode="disable" if R is None else "induce",
        rel_norm="no-norm",
        threads=threads,
        # PECOS defaults, spelled out so the output records them.
        solver_type="L2R_L2LOSS_SVC_DUAL",
        Cp=1.0,
        Cn=1.0,
        threshold=0.1,
        bias=1.0,
        negative_sampling_scheme="tfn",
    )


def cmd_train(a: argparse.Namespace) -> None:
    X = load_csr(os.path.join(a.data, "X_trn.npz"))
    Y = load_csr(os.path.join(a.data, "Y_trn.npz"))
    chain = load_chain(a.data)
    log(f"train: X {X.shape} nnz {X.nnz}, Y {Y.shape}, layers {[c.shape[0] for c in chain]}")
    t0, c0 = time.perf_counter(), time.process_time()
    R = _relevance(a.data, a.relevance)
    model = _train(X, Y, chain, a.threads, R)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    log(f"trained in {secs:.1f}s ({cpu:.1f}s CPU)")
    shutil.rmtree(a.model, ignore_errors=True)
    model.save(a.model)
    res: dict = {
        "train_seconds": secs,
        "train_cpu_seconds": cpu,
        "loadavg_after": os.getloadavg(),
        "model_bytes": du_bytes(a.model),
        "threads": a.threads,
        "params": {"solver": "L2R_L2LOSS_SVC_DUAL", "Cp": 1.0, "Cn": 1.0, "threshold": 0.1,
                   "bias": 1.0, "neg": "tfn", "relevance": a.relevance},
    }
    if a.text_model:
        # PECOS end to end with its own features: needed for an honest text-in latency
        # when the shared features come from qac's vectorizer.
        del X, model
        trn = read_texts(os.path.join(a.data, "train_texts.txt"))
        t0 = time.perf_counter()
        vec = fit_vectorizer(trn, a.threads)
        Xo = vec.predict(trn, threads=a.threads).astype(np.float32).tocsr()
        vsecs = time.perf_counter() - t0
        t0 = time.perf_counter()
        m2 = _train(Xo, Y, chain, a.threads, R)
        secs2 = time.perf_counter() - t0
        tdir = a.model + "-text"
        shutil.rmtree(tdir, ignore_errors=True)
        m2.save(tdir)
        vec.save(os.path.join(tdir, "vectorizer"))
        log(f"text model: vectorizer {vsecs:.1f}s, train {secs2:.1f}s, d={Xo.shape[1]}")
        res["text_model"] = {"vectorize_seconds": vsecs, "train_seconds": secs2,
                             "n_features": int(Xo.shape[1]), "model_bytes": du_bytes(tdir)}
    write_json(a.out, res)


def topk_ids(P: smat.csr_matrix, k: int) -> np.ndarray:
    """Sparse prediction rows -> (n, k) int32 label ids by score desc (ties: smaller id), -1 pad."""
    P = P.tocsr()
    out = np.full((P.shape[0], k), -1, dtype=np.int32)
    for i in range(P.shape[0]):
        s, e = P.indptr[i], P.indptr[i + 1]
        idx, val = P.indices[s:e], P.data[s:e]
        order = np.lexsort((idx, -val))[:k]
        out[i, : len(order)] = idx[order]
    return out


def percentiles(ns: list[int]) -> dict:
    a = np.asarray(ns, dtype=np.float64) / 1e6  # ms
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "mean_ms": float(a.mean()), "n": len(ns)}


def cmd_eval(a: argparse.Namespace) -> None:
    from pecos.utils.featurization.text.vectorizers import Vectorizer
    from pecos.xmc.xlinear.model import XLinearModel

    kw = {"beam_size": a.beam, "only_topk": a.topk, "post_processor": "l3-hinge"}
    X = load_csr(os.path.join(a.data, "X_tst.npz"))
    t0 = time.perf_counter()
    model = XLinearModel.load(a.model, is_predict_only=True)
    load_secs = time.perf_counter() - t0
    res: dict = {"load_seconds": load_secs, "beam": a.beam, "topk": a.topk,
                 "loadavg_before": os.getloadavg()}

    # Batch: whole test matrix in one call.
    model.predict(X[: min(1000, X.shape[0])], threads=a.threads, **kw)  # warm-up
    t0 = time.perf_counter()
    P = model.predict(X, threads=a.threads, **kw)
    bsecs = time.perf_counter() - t0
    res["batch"] = {"seconds": bsecs, "qps": X.shape[0] / bsecs, "threads": a.threads,
                    "n": int(X.shape[0])}
    ids = topk_ids(P, a.topk)
    np.save(a.out + ".topk.npy", ids)
    log(f"batch: {X.shape[0]} queries in {bsecs:.2f}s ({X.shape[0] / bsecs:.0f} q/s)")

    # Single-row latency on features: threads=1, rows pre-sliced so slicing is not timed.
    rng = np.random.default_rng(0)
    n = X.shape[0]
    sample = np.sort(rng.choice(n, size=min(a.latency_sample, n), replace=False))
    rows = [X[int(i)] for i in sample]
    for r in rows[: a.warmup]:
        model.predict(r, threads=1, **kw)
    lat = []
    pc = time.perf_counter_ns
    for r in rows:
        t0 = pc()
        model.predict(r, threads=1, **kw)
        lat.append(pc() - t0)
    res["latency_features"] = percentiles(lat)
    log(f"latency (features): p50 {res['latency_features']['p50_ms']:.3f} ms "
        f"p99 {res['latency_features']['p99_ms']:.3f} ms")

    # Text in: vectorizer.predict([text]) + model.predict(row), threads=1.
    texts = read_texts(os.path.join(a.data, "test_texts.txt"))
    qtexts = [texts[int(i)] for i in sample]
    tdir = a.model + "-text"
    shared_vec = os.path.join(a.data, "pecos_vectorizer")
    meta = json.load(open(os.path.join(a.data, "meta.json"), encoding="utf-8"))
    if os.path.isdir(tdir):
        mode, tmodel, vec = "own-model", XLinearModel.load(tdir, is_predict_only=True), \
            Vectorizer.load(os.path.join(tdir, "vectorizer"))
    elif meta.get("features") == "pecos":
        mode, tmodel, vec = "shared", model, Vectorizer.load(shared_vec)
    else:
        # The shared features are not PECOS's and no own-feature model was trained: time
        # PECOS's vectorizer on the text, then predict on the query's shared feature row
        # (the same work as a genuine pipeline, up to the two rows' nnz).
        mode, tmodel = "sum", model
        vec = Vectorizer.load(shared_vec) if os.path.isdir(shared_vec) else None
    if vec is not None:
        for t, r in zip(qtexts[: a.warmup], rows[: a.warmup], strict=True):
            v = vec.predict([t], threads=1)
            tmodel.predict(v if mode != "sum" else r, threads=1, **kw)
        lat = []
        for t, r in zip(qtexts, rows, strict=True):
            t0 = pc()
            v = vec.predict([t], threads=1)
            tmodel.predict(v if mode != "sum" else r, threads=1, **kw)
            lat.append(pc() - t0)
        res["latency_text"] = {**percentiles(lat), "mode": mode}
        log(f"latency (text, {mode}): p50 {res['latency_text']['p50_ms']:.3f} ms "
            f"p99 {res['latency_text']['p99_ms']:.3f} ms")
        if mode == "own-model":
            Xo = vec.predict(texts, threads=a.threads).astype(np.float32)
            np.save(a.out + ".text.topk.npy", topk_ids(tmodel.predict(Xo, threads=a.threads,
                                                                       **kw), a.topk))
    else:
        res["latency_text"] = None
    res["loadavg_after"] = os.getloadavg()
    write_json(a.out, res)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("vectorize", "fit-vectorizer", "index", "train", "eval"):
        p = sub.add_parser(name)
        p.add_argument("--data", required=True)
        p.add_argument("--out", required=True, help="result JSON path")
        p.add_argument("--threads", type=int, default=2)
        if name == "index":
            p.add_argument("--branching", type=int, default=16)
            p.add_argument("--max-leaf-size", type=int, default=100)
            p.add_argument("--seed", type=int, default=0)
        if name in ("train", "eval"):
            p.add_argument("--model", required=True)
        if name == "train":
            p.add_argument("--text-model", action="store_true")
            p.add_argument("--relevance", choices=("off", "log", "sqrt", "linear"),
                           default="off", help="click counts as positive costs (R_trn.npz)")
        if name == "eval":
            p.add_argument("--beam", type=int, default=10)
            p.add_argument("--topk", type=int, default=10)
            p.add_argument("--latency-sample", type=int, default=5000)
            p.add_argument("--warmup", type=int, default=200)
    a = ap.parse_args()
    {"vectorize": cmd_vectorize, "fit-vectorizer": cmd_fit_vectorizer, "index": cmd_index,
     "train": cmd_train, "eval": cmd_eval}[a.cmd](a)


if __name__ == "__main__":
    main()

"""qac vs libpecos XR-Linear, side by side in one run.

    python sim/bench_xmr.py run --task aol                 # prepare + both systems + table
    python sim/bench_xmr.py run --task synth --scale 0.05  # quick synthetic check
    python sim/bench_xmr.py run --task synth               # 1M labels, 2M instances

Stages (each skipped when its output exists unless --force; --only/--skip-* pick stages):

1. ``prepare``: texts, Y, shared features X (qac's Vectorizer, else PECOS tfidf as a
   fallback) and one cluster chain (qac's k-means tree, else PECOS's indexer) saved under
   ``bench-out/<task>/data``. Both systems train and predict on exactly these files.
2. ``pecos-train`` / ``pecos-eval``: ``.bench-pecos/bin/python sim/pecos_side.py`` (the
   venv is created on first use; libpecos needs numpy<2).
3. ``qac-train`` / ``qac-eval``: ``python sim/bench_xmr.py qac-side ...``.

Every train and eval step is its own child process: its peak RSS is the child's
``ru_maxrss`` from ``wait4``. Quality (P@1, R@10) is computed here by one function on both
systems' top-k ids. Latency loops run one system after the other, never concurrently.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as smat

ROOT = Path(__file__).resolve().parent.parent
SIM = ROOT / "sim"
VENV = ROOT / ".bench-pecos"
PECOS_PY = VENV / "bin" / "python"
AOL = Path(os.environ.get("QAC_AOL_DIR", ROOT.parent.parent / "shared" / "data" / "aol"))
if not AOL.exists():
    AOL = Path("/work/shared/data/aol")
# QAC_SRC: run against another qac tree (e.g. an integration checkout); children inherit it.
sys.path.insert(0, os.environ.get("QAC_SRC", str(ROOT)))


_RELEVANCE = ("off", "log", "sqrt", "linear")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def du_bytes(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


# --------------------------------------------------------------------------- children


class StageTimeout(Exception):
    """A train/eval stage ran past --stage-timeout and was killed."""


def run_child(cmd: list[str], what: str, timeout: float = 0) -> dict[str, Any]:
    """Run one stage in a child process; return its wall time, CPU time and peak RSS (MiB).

    With ``timeout`` > 0 the child is killed after that many seconds (StageTimeout).
    """
    log(f"{what}: {' '.join(cmd)}")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT)
    deadline = t0 + timeout if timeout > 0 else None
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG if deadline else 0)
        if pid == proc.pid:
            break
        if deadline and time.perf_counter() > deadline:
            proc.kill()
            os.wait4(proc.pid, 0)
            proc.returncode = -9
            raise StageTimeout(f"{what} killed after {timeout:.0f}s")
        time.sleep(0.5)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed with exit code {proc.returncode}")
    rss = ru.ru_maxrss / 1024.0  # Linux: KiB
    log(f"{what}: done in {wall:.1f}s, peak RSS {rss:.0f} MiB")
    return {"wall_seconds": wall, "cpu_seconds": ru.ru_utime + ru.ru_stime,
            "peak_rss_mib": rss}


def ensure_pecos_venv() -> None:
    """Create .bench-pecos with libpecos and only what its XR-Linear import needs."""
    if PECOS_PY.exists():
        ok = subprocess.run(
            [str(PECOS_PY), "-c", "import pecos.xmc.xlinear.model, "
             "pecos.utils.featurization.text.vectorizers"],
            capture_output=True,
        )
        if ok.returncode == 0:
            return
    log("creating .bench-pecos (libpecos 1.2.8 without torch; numpy<2, scipy<1.14)")
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(VENV / "bin" / "pip"), "install", "-q"]
    subprocess.run(pip + ["--no-deps", "libpecos==1.2.8"], check=True)
    subprocess.run(pip + ["numpy<2", "scipy<1.14", "scikit-learn<1.6"], check=True)


# --------------------------------------------------------------------------- data

_URL_NOISE = {"http", "https", "www", "com", "net", "org", "html", "htm", "php", "asp",
              "aspx", "index", "jsp", "cgi", "shtml"}
_NONALNUM = re.compile(r"[^0-9a-z]+")


def url_title(url: str) -> str:
    """The words of a URL (host and path split on non-alphanumerics, noise dropped)."""
    return " ".join(w for w in _NONALNUM.split(url.lower()) if w and w not in _URL_NOISE)


def _read_q2u(path: Path) -> list[tuple[str, list[str]]]:
    from qac.text import normalize

    rows = []
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        next(f)  # header
        for line in f:
            q, _, urls = line.rstrip("\n").partition("\t")
            q = normalize(q[:1024])
            if q:
                rows.append((q, [u for u in urls.split("|") if u]))
    return rows


def _click_counts(until: str = "2006-05-18") -> dict[tuple[str, str], int]:
    """(normalized query, URL) -> clicks in the session log's rows before ``until``: the
    rows query2url_train was made from (one row per click; query2url keeps only the set)."""
    from collections import Counter

    from qac.text import normalize

    counts: Counter[tuple[str, str]] = Counter()
    with gzip.open(AOL / "sessions" / "aol_top1000_sessions_dev.tsv.gz", "rt",
                   encoding="utf-8", errors="replace") as f:
        next(f)  # header
        for line in f:
            row = line.rstrip("\n").split("\t")
            if len(row) < 5 or not row[4] or row[3] >= until:
                continue
            q = normalize(row[2][:1024])
            for u in row[4].split("|"):
                if u:
                    counts[q, u] += 1
    return counts


def build_aol(data: Path) -> dict[str, Any]:
    """AOL query -> clicked URL: train queries + one title instance per URL. Besides Y,
    ``R_trn.npz`` holds each training pair's click count (a title's pair: 1)."""
    trn = _read_q2u(AOL / "query2url" / "query2url_train.tsv.gz")
    val = _read_q2u(AOL / "query2url" / "query2url_valid.tsv.gz")
    labels = sorted({u for _, us in trn for u in us})
    lid = {u: i for i, u in enumerate(labels)}
    clicks = _click_counts()
    texts, rows, cols, vals = [], [], [], []
    for q, us in trn:
        for u in dict.fromkeys(us):
            rows.append(len(texts))
            cols.append(lid[u])
            vals.append(max(clicks.get((q, u), 1), 1))
        texts.append(q)
    n_q, n_clicks = len(texts), sum(vals)
    for u in labels:
        t = url_title(u)
        if t:
            rows.append(len(texts))
            cols.append(lid[u])
            vals.append(1)
            texts.append(t)
    R_trn = smat.csr_matrix((np.asarray(vals, np.float32), (rows, cols)),
                            shape=(len(texts), len(labels)))
    smat.save_npz(data / "R_trn.npz", R_trn)
    Y_trn = smat.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)),
                            shape=(len(texts), len(labels)))
    tst_texts, trows, tcols, dropped = [], [], [], 0
    for q, us in val:
        known = sorted({lid[u] for u in us if u in lid})
        if not known:
            dropped += 1
            continue
        for c in known:
            trows.append(len(tst_texts))
            tcols.append(c)
        tst_texts.append(q)
    Y_tst = smat.csr_matrix((np.ones(len(trows), np.float32), (trows, tcols)),
                            shape=(len(tst_texts), len(labels)))
    _save_texts(data, texts, tst_texts, Y_trn, Y_tst)
    return {"n_train_queries": n_q, "n_title_instances": len(texts) - n_q,
            "n_train_clicks": int(n_clicks),
            "n_labels": len(labels), "n_test": len(tst_texts),
            "n_valid_rows_dropped_no_known_url": dropped,
            "eval_rows": "valid queries with >= 1 clicked URL seen in train; "
                         "R@10 denominator = that row's seen URLs"}


def _save_texts(data: Path, trn: list[str], tst: list[str], Y_trn: smat.csr_matrix,
                Y_tst: smat.csr_matrix) -> None:
    for name, texts in (("train_texts.txt", trn), ("test_texts.txt", tst)):
        assert all("\n" not in t for t in texts)
        (data / name).write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    for name, Y in (("Y_trn.npz", Y_trn), ("Y_tst.npz", Y_tst)):
        Y = Y.tocsr()
        Y.sum_duplicates()
        Y.data[:] = 1.0
        smat.save_npz(data / name, Y.astype(np.float32))


def build_synth(data: Path, scale: float, seed: int) -> dict[str, Any]:
    sys.path.insert(0, str(SIM))
    import synth

    g = synth.SynthConfig.scaled(scale, seed=seed)
    trn, Y_trn, tst, Y_tst = synth.generate(g, log=log)
    _save_texts(data, trn, tst, Y_trn, Y_tst)
    return {"synth": g.as_dict(), "n_train": len(trn), "n_test": len(tst),
            "n_labels": g.n_labels}


def qac_available(what: str) -> bool:
    mods = {"features": "qac.features", "tree": "qac.index.kmeans",
            "model": "qac.model.xlinear"}
    try:
        __import__(mods[what])
        if what == "features":
            from qac.features import Vectorizer  # noqa: F401
        return True
    except Exception as e:  # noqa: BLE001 - any import failure means "not merged yet"
        log(f"qac {what} not available ({type(e).__name__}: {e})")
        return False


def qac_blocks() -> list[Any]:
    from qac.features import BlockConfig

    return [BlockConfig(kind="word", ngram_range=(1, 2)), BlockConfig(kind="char",
                                                                    ngram_range=(3, 3))]


def featurize_qac(data: Path, threads: int) -> dict[str, Any]:
    from qac.features import Vectorizer

    trn = (data / "train_texts.txt").read_text(encoding="utf-8").split("\n")[:-1]
    tst = (data / "test_texts.txt").read_text(encoding="utf-8").split("\n")[:-1]
    t0 = time.perf_counter()
    vec = Vectorizer(qac_blocks()).fit(trn)
    fit_s = time.perf_counter() - t0
    X_trn = vec.transform(trn, threads=threads)
    X_tst = vec.transform(tst, threads=threads)
    secs = time.perf_counter() - t0
    smat.save_npz(data / "X_trn.npz", X_trn.tocsr())
    smat.save_npz(data / "X_tst.npz", X_tst.tocsr())
    vdir = data / "qac_vectorizer"
    vdir.mkdir(exist_ok=True)
    write_json(vdir / "config.json", vec.config())
    np.savez(vdir / "arrays.npz", **vec.arrays())
    log(f"qac features: X_trn {X_trn.shape} nnz {X_trn.nnz} in {secs:.1f}s")
    return {"fit_seconds": fit_s, "seconds": secs, "n_features": int(X_trn.shape[1])}


def save_chain(chain: list[smat.csc_matrix], cdir: Path) -> None:
    cdir.mkdir(parents=True, exist_ok=True)
    for i, C in enumerate(chain):
        smat.save_npz(cdir / f"C{i}.npz", smat.csc_matrix(C, dtype=np.float32))
    (cdir / "config.json").write_text(json.dumps({"len": len(chain)}))


def index_qac(data: Path, a: argparse.Namespace) -> dict[str, Any]:
    from qac.index.kmeans import build_kmeans_tree, pifa

    X = smat.load_npz(data / "X_trn.npz").tocsr()
    Y = smat.load_npz(data / "Y_trn.npz").tocsr()
    t0 = time.perf_counter()
    tree = build_kmeans_tree(pifa(X, Y), branching=a.branching, max_leaf_size=a.max_leaf_size,
                             seed=0, threads=a.threads)
    secs = time.perf_counter() - t0
    save_chain(tree.to_cluster_chain(), data / "chain")
    sizes = [int(s) for s in tree.layer_sizes]
    log(f"qac tree: layer sizes {sizes} in {secs:.1f}s")
    return {"seconds": secs, "layer_sizes": sizes}


def prepare(a: argparse.Namespace, data: Path) -> tuple[dict[str, Any], bool]:
    """Build (or reuse) the shared data; returns (meta, rebuilt)."""
    feats = a.features
    if feats == "auto":
        feats = "qac" if qac_available("features") else "pecos"
    tree = a.tree
    if tree == "auto":
        tree = "qac" if qac_available("tree") else "pecos"
    meta_path = data / "meta.json"
    if meta_path.exists() and not a.force:
        meta = json.loads(meta_path.read_text())
        same = (meta.get("features"), meta.get("tree"), meta.get("branching"),
                meta.get("max_leaf_size")) == (feats, tree, a.branching, a.max_leaf_size)
        if same:
            return meta, False
        log(f"data in {data} was built with features={meta.get('features')} "
            f"tree={meta.get('tree')}; rebuilding for features={feats} tree={tree}")
    data.mkdir(parents=True, exist_ok=True)
    log(f"prepare {a.task} -> {data}")
    meta = {"task": a.task}
    meta.update(build_aol(data) if a.task == "aol" else build_synth(data, a.scale, a.seed))
    meta["features"] = feats
    write_json(meta_path.with_suffix(".partial.json"), meta)
    if feats == "qac":
        meta["featurize"] = featurize_qac(data, a.threads)
        ensure_pecos_venv()  # PECOS's own tfidf, for its text-in latency
        run_child([str(PECOS_PY), str(SIM / "pecos_side.py"), "fit-vectorizer", "--data",
                   str(data), "--out", str(data / "fit_vectorizer.json"), "--threads",
                   str(a.threads)], "pecos-fit-vectorizer")
    else:
        ensure_pecos_venv()
        r = run_child([str(PECOS_PY), str(SIM / "pecos_side.py"), "vectorize", "--data",
                       str(data), "--out", str(data / "vectorize.json"),
                       "--threads", str(a.threads)], "pecos-vectorize")
        meta["featurize"] = {**json.loads((data / "vectorize.json").read_text()), **r}
    meta["tree"] = tree
    if tree == "qac":
        meta["index"] = index_qac(data, a)
    else:
        ensure_pecos_venv()
        r = run_child([str(PECOS_PY), str(SIM / "pecos_side.py"), "index", "--data",
                       str(data), "--out", str(data / "index.json"), "--threads",
                       str(a.threads), "--branching", str(a.branching), "--max-leaf-size",
                       str(a.max_leaf_size)], "pecos-index")
        meta["index"] = {**json.loads((data / "index.json").read_text()), **r}
    meta["branching"] = a.branching
    meta["max_leaf_size"] = a.max_leaf_size
    write_json(meta_path, meta)
    return meta, True


# --------------------------------------------------------------------------- quality


def quality(ids: np.ndarray, Y: smat.csr_matrix, k: int = 10) -> dict[str, float]:
    """P@1 and R@k of (n, >=k) predicted ids (-1 = empty slot) against csr truth Y."""
    Y = Y.tocsr()
    n = Y.shape[0]
    assert ids.shape[0] == n, (ids.shape, Y.shape)
    hit1 = 0
    rec = 0.0
    for i in range(n):
        truth = Y.indices[Y.indptr[i]:Y.indptr[i + 1]]
        if truth.size == 0:
            continue
        top = ids[i, :k]
        top = top[top >= 0]
        hit1 += int(top.size > 0 and np.isin(top[0], truth))
        rec += np.isin(truth, top).sum() / truth.size
    return {"p@1": hit1 / n, f"r@{k}": rec / n, "n": n}


# --------------------------------------------------------------------------- qac side


def _texts(data: Path, name: str) -> list[str]:
    return (data / name).read_text(encoding="utf-8").split("\n")[:-1]


def qac_train(a: argparse.Namespace) -> None:
    """qac's retrieval pipeline from text, as ``qac retrieve train`` runs it: its own
    features, its own tree and its rankers (``qac.retrieve.default_config``), saved as a
    model directory (format of ``qac.storage``; every array memory-mapped at load)."""
    from qac.engine import Engine
    from qac.retrieve import KnownVariants, default_config
    from qac.storage import save_model_dir

    data, mdir = Path(a.data), Path(a.model)
    texts = _texts(data, "train_texts.txt")
    config = default_config(threads=a.threads)
    if a.relevance != "off":  # the click counts, each positive's cost scaled so
        config = replace(config, train=replace(config.train, relevance=a.relevance))
        Y = smat.load_npz(data / "R_trn.npz").tocsr()
    else:  # the URL sets: every pair one click, so the cost of each is Cp, as PECOS's
        Y = smat.load_npz(data / "Y_trn.npz").tocsr()
    log(f"qac train: {len(texts)} texts, {Y.shape[1]} labels, config {config.to_dict()}")
    t0, c0 = time.perf_counter(), time.process_time()
    engine = Engine.fit(texts, Y, config)
    t1 = time.perf_counter()
    variants = KnownVariants.build(texts, Y)  # as Retriever.train
    timings = {**engine.timings, "variants": time.perf_counter() - t1}
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    log(f"qac trained in {secs:.1f}s ({cpu:.1f}s CPU): {timings}")
    save_model_dir(mdir, "engine", engine.manifest_config(),
                   {**engine.arrays(), **variants.arrays("variants.")})
    write_json(Path(a.out), {"train_seconds": secs, "train_cpu_seconds": cpu,
                             "stages_seconds": timings,
                             "loadavg_after": os.getloadavg(),
                             "model_bytes": du_bytes(mdir), "threads": a.threads,
                             "n_features": engine.vectorizer.n_features,
                             "layer_sizes": list(engine.tree.layer_sizes),
                             "config": config.to_dict()})


def _pct(ns: list[int]) -> dict[str, Any]:
    arr = np.asarray(ns, dtype=np.float64) / 1e6
    return {"p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99)),
            "mean_ms": float(arr.mean()), "n": len(ns)}


def qac_eval(a: argparse.Namespace) -> None:
    """Batch top-k on the test texts' features, single-query latency on features and
    text in (normalize + Engine.search: one C call, then the known variants' items put
    first, as ``Retriever.search``), at qac's configured beam. The batch's time includes
    the known variants' merge (``KnownVariants.merge_batch``)."""
    from qac.engine import Engine
    from qac.retrieve import KnownVariants
    from qac.storage import open_model_dir
    from qac.text import normalize

    data, mdir, out = Path(a.data), Path(a.model), Path(a.out)
    texts = _texts(data, "test_texts.txt")
    t0 = time.perf_counter()
    md = open_model_dir(mdir, kind="engine")
    engine = Engine.from_model_dir(md)
    variants = KnownVariants.from_arrays(md.arrays("variants."), engine.n_labels)

    def search(text: str) -> list[int]:  # text in, ids out: Retriever.search's path
        q = normalize(text)
        return variants.merge(q, *engine.search(q, k=a.topk), a.topk)[0]

    beam = engine.config.beam
    res: dict[str, Any] = {"load_seconds": time.perf_counter() - t0, "beam": beam,
                           "topk": a.topk, "loadavg_before": os.getloadavg()}
    X = engine.vectorizer.transform(texts, threads=a.threads)
    model = engine.model
    model.predict(X[: min(1000, X.shape[0])], beam=beam, topk=a.topk, threads=a.threads)
    t0 = time.perf_counter()
    ids, _ = variants.merge_batch(texts, *model.predict(X, beam=beam, topk=a.topk,
                                                        threads=a.threads))
    bsecs = time.perf_counter() - t0
    res["batch"] = {"seconds": bsecs, "qps": X.shape[0] / bsecs, "threads": a.threads,
                    "n": int(X.shape[0])}
    np.save(str(out) + ".topk.npy", np.asarray(ids, np.int32))
    log(f"qac batch: {X.shape[0]} queries in {bsecs:.2f}s ({X.shape[0] / bsecs:.0f} q/s)")

    rng = np.random.default_rng(0)  # the same sample as pecos_side.py
    n = X.shape[0]
    sample = np.sort(rng.choice(n, size=min(a.latency_sample, n), replace=False))
    rows = [(X.indices[X.indptr[i]:X.indptr[i + 1]].astype(np.int32),
             X.data[X.indptr[i]:X.indptr[i + 1]].astype(np.float32)) for i in sample]
    pc = time.perf_counter_ns
    for idx, val in rows[: a.warmup]:
        model.predict_one(idx, val, beam, a.topk)
    lat = []
    for idx, val in rows:
        t0 = pc()
        model.predict_one(idx, val, beam, a.topk)
        lat.append(pc() - t0)
    res["latency_features"] = _pct(lat)
    log(f"qac latency (features): p50 {res['latency_features']['p50_ms']:.3f} ms")

    qtexts = [texts[int(i)] for i in sample]
    same = 0
    for t, want in zip(qtexts[: a.warmup], np.asarray(ids)[sample][: a.warmup], strict=True):
        got = np.asarray(search(t), np.int64)
        same += int(np.array_equal(got, want[want >= 0]))
    if same != min(a.warmup, len(qtexts)):
        log(f"WARNING: Engine.search matched batch predict on {same} of {a.warmup} rows")
    lat = []
    for t in qtexts:
        t0 = pc()
        search(t)
        lat.append(pc() - t0)
    res["latency_text"] = {**_pct(lat), "mode": "normalize + Engine.search (one C call) + "
                           "known variants (Retriever.search's path)"}
    log(f"qac latency (text): p50 {res['latency_text']['p50_ms']:.3f} ms")
    res["loadavg_after"] = os.getloadavg()
    write_json(out, res)


# --------------------------------------------------------------------------- run


def stage_ok(path: Path, a: argparse.Namespace) -> bool:
    return path.exists() and not a.force


def run(a: argparse.Namespace) -> None:
    if a.relevance != "off" and a.task != "aol":
        raise SystemExit("--relevance needs click counts: only --task aol has them")
    name = a.name or (a.task if a.task == "aol" else f"synth-{a.scale:g}")
    if a.relevance != "off" and not a.name:
        name += f"-clicks-{a.relevance}"
    out_dir = ROOT / "bench-out" / name
    data = out_dir / "data"
    only = set(a.only.split(",")) if a.only else None

    def want(stage: str) -> bool:
        if only is not None:
            return stage in only
        return not ((stage.startswith("pecos") and a.skip_pecos)
                    or (stage.startswith("qac") and a.skip_qac))

    meta, rebuilt = prepare(a, data)
    if rebuilt:  # results of older data are void
        for old in out_dir.glob("*-*.json*"):
            old.unlink()
    common = ["--data", str(data), "--threads", str(a.threads)]
    ev = ["--beam", str(a.beam), "--topk", str(a.topk), "--latency-sample",
          str(a.latency_sample)]
    res_path = ROOT / "bench-out" / f"{name}.json"
    res: dict[str, Any] = {}
    res.update({"task": name, "meta": meta, "machine": {"nproc": os.cpu_count()},
                "settings": {"beam": a.beam, "topk": a.topk, "threads_train": a.threads,
                             "threads_batch": a.threads, "threads_latency": 1,
                             "B": meta.get("branching"), "relevance": a.relevance,
                             "max_leaf_size": meta.get("max_leaf_size")}})
    systems: dict[str, Any] = {}  # rebuilt from the stage files every run
    res["systems"] = systems

    steps = []
    if want("pecos-train") or want("pecos-eval"):
        ensure_pecos_venv()
    pecos_cmd = [str(PECOS_PY), str(SIM / "pecos_side.py")]
    qac_cmd = [sys.executable, str(SIM / "bench_xmr.py")]
    text_model = a.pecos_text_model if a.pecos_text_model != "auto" else (
        "own" if meta.get("features") != "pecos" and a.task == "aol" else "no")
    rel = ["--relevance", a.relevance]
    steps.append(("pecos", "train", pecos_cmd + ["train", "--model", str(out_dir / "pecos-model")]
                  + (["--text-model"] if text_model == "own" else []) + rel))
    steps.append(("pecos", "eval", pecos_cmd + ["eval", "--model", str(out_dir / "pecos-model")]
                  + ev))
    steps.append(("qac", "train", qac_cmd + ["qac-side", "train", "--model",
                                             str(out_dir / "qac-model")] + rel))
    steps.append(("qac", "eval", qac_cmd + ["qac-side", "eval", "--model",
                                            str(out_dir / "qac-model")] + ev))
    for system, step, cmd in steps:
        if not want(f"{system}-{step}"):
            continue
        if system == "qac" and not qac_available("model"):
            log(f"skip qac-{step}: qac.model.xlinear is not available yet")
            continue
        jp = out_dir / f"{system}-{step}.json"
        if stage_ok(jp, a) and not (only and f"{system}-{step}" in only):
            log(f"{system}-{step}: cached ({jp.name}); --force to redo")
        else:
            try:
                r = run_child(cmd + common + ["--out", str(jp)], f"{system}-{step}",
                              a.stage_timeout)
            except StageTimeout as e:
                log(str(e))
                write_json(out_dir / f"{system}-{step}.timeout.json",
                           {"timeout_seconds": a.stage_timeout, "what": str(e)})
                continue
            d = json.loads(jp.read_text())
            d["child"] = r
            write_json(jp, d)
    Y_tst = smat.load_npz(data / "Y_tst.npz").tocsr()
    for system in ("pecos", "qac"):
        s: dict[str, Any] = {}
        for step in ("train", "eval"):
            jp = out_dir / f"{system}-{step}.json"
            if jp.exists():
                s[step] = json.loads(jp.read_text())
        tk = out_dir / f"{system}-eval.json.topk.npy"
        if tk.exists():
            s["quality"] = quality(np.load(tk), Y_tst, a.topk)
        tk2 = out_dir / f"{system}-eval.json.text.topk.npy"
        if tk2.exists():
            s["quality_own_features"] = quality(np.load(tk2), Y_tst, a.topk)
        if s:
            systems[system] = s
    write_json(res_path, res)
    print(table(res))
    log(f"wrote {res_path}")


def table(res: dict[str, Any]) -> str:
    sy = res["systems"]
    meta = res["meta"]

    def g(system: str, *path: str) -> Any:
        cur: Any = sy.get(system)
        for p in path:
            if not isinstance(cur, dict) or p not in cur:
                return None
            cur = cur[p]
        return cur

    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    rows = [
        ("training time (s), threads=2", "train", "train_seconds", ".1f"),
        ("training CPU time (s)", "train", "train_cpu_seconds", ".1f"),
        ("model size on disk (MiB)", "train", "model_bytes", "mib"),
        ("peak RSS train (MiB)", "train", "child.peak_rss_mib", ".0f"),
        ("peak RSS eval (MiB)", "eval", "child.peak_rss_mib", ".0f"),
        ("precision@1", "quality", "p@1", ".4f"),
        (f"recall@{res['settings']['topk']}", "quality", f"r@{res['settings']['topk']}", ".4f"),
        ("latency features p50 (ms), 1 thread", "eval", "latency_features.p50_ms", ".3f"),
        ("latency features p99 (ms), 1 thread", "eval", "latency_features.p99_ms", ".3f"),
        ("latency text-in p50 (ms), 1 thread", "eval", "latency_text.p50_ms", ".3f"),
        ("latency text-in p99 (ms), 1 thread", "eval", "latency_text.p99_ms", ".3f"),
        ("batch throughput (q/s), threads=2", "eval", "batch.qps", ".0f"),
    ]
    lines = [f"task {res['task']}: {meta.get('n_labels')} labels, topk={res['settings']['topk']}",
             f"{'':44s} {'libpecos 1.2.8':>16s} {'qac':>12s}"]
    for label, top, key, fmt in rows:
        vals = []
        for system in ("pecos", "qac"):
            v = g(system, top, *key.split("."))
            if fmt == "mib":
                vals.append(f(None if v is None else v / 2**20, ".1f"))
            else:
                vals.append(f(v, fmt))
        lines.append(f"{label:44s} {vals[0]:>16s} {vals[1]:>12s}")
    qm = g("qac", "eval", "latency_text", "mode")
    tm = g("pecos", "eval", "latency_text", "mode")
    notes = [f"libpecos: XLinearModel.train with its defaults on the shared features "
             f"({meta.get('features')} word 1-2 + char 3 TF-IDF, "
             f"d={meta.get('featurize', {}).get('n_features')}) and tree ({meta.get('tree')} "
             f"k-means on PIFA, layers {meta.get('index', {}).get('layer_sizes')}, "
             f"B={res['settings']['B']}), beam {g('pecos', 'eval', 'beam') or '-'}; training time "
             "excludes featurization and indexing"]
    qt = g("qac", "train")
    if qt:
        st = qt.get("stages_seconds", {})
        cfg = qt.get("config", {})
        notes.append(
            f"qac: its own retrieval pipeline from text (qac.retrieve.default_config: "
            f"d={qt.get('n_features')}, layers {qt.get('layer_sizes')}, Cp="
            f"{cfg.get('train', {}).get('Cp')}, label_power={cfg.get('label_power')}, "
            f"{cfg.get('train', {}).get('values')} weights), beam {g('qac', 'eval', 'beam')}; "
            "training time includes features "
            f"{st.get('features', 0):.1f}s + tree {st.get('tree', 0):.1f}s + rankers "
            f"{st.get('rankers', 0):.1f}s; model size = the whole model directory "
            "(features, tree, weights)")
    rel = res["settings"].get("relevance", "off")
    if rel != "off":
        notes.append(f"click counts ({meta.get('n_train_clicks')} clicks in the session log's "
                     f"training rows) as positive costs, {rel}: libpecos R (rel_mode induce), "
                     "qac TrainConfig.relevance")
    notes.append(f"quality over {g('pecos', 'quality', 'n') or g('qac', 'quality', 'n')} "
                 "test rows")
    if meta.get("task") == "aol":
        notes.append(meta.get("eval_rows", "") + f"; dropped "
                     f"{meta.get('n_valid_rows_dropped_no_known_url')} valid rows")
    if tm:
        notes.append(f"pecos text-in mode: {tm} " + {
            "own-model": "(its own tfidf + a 2nd model trained on it with the same tree)",
            "shared": "(the shared features are PECOS's tfidf)",
            "sum": "(its tfidf of the text, then predict on the shared feature row)"}.get(tm, ""))
    if qm:
        notes.append(f"qac text-in: {qm}")
    qo = g("pecos", "quality_own_features")
    if qo:
        notes.append(f"pecos on its own tfidf features: P@1 {qo['p@1']:.4f} "
                     f"R@10 {qo['r@10']:.4f}")
    notes.append("latency: medians on a noisy shared 2-core machine; systems measured one "
                 "after the other")
    return "\n".join(lines + ["  * " + n for n in notes])


def main() -> None:
    ap = argparse.ArgumentParser(description="qac vs libpecos XR-Linear benchmark")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="prepare, run both systems, print the table")
    p.add_argument("--task", choices=("aol", "synth"), required=True)
    p.add_argument("--scale", type=float, default=1.0, help="synth: fraction of 1M labels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", help="output name under bench-out/ (default: aol, synth-<scale>)")
    p.add_argument("--features", choices=("auto", "qac", "pecos"), default="auto")
    p.add_argument("--tree", choices=("auto", "qac", "pecos"), default="auto")
    p.add_argument("--branching", type=int, default=16)
    p.add_argument("--max-leaf-size", type=int, default=100)
    p.add_argument("--beam", type=int, default=10)
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--latency-sample", type=int, default=5000)
    p.add_argument("--pecos-text-model", choices=("auto", "own", "no"), default="auto",
                   help="train PECOS a 2nd model on its own tfidf for text-in latency")
    p.add_argument("--only", help="comma list of stages: pecos-train,pecos-eval,qac-train,"
                                  "qac-eval (prepare always runs if missing)")
    p.add_argument("--relevance", choices=_RELEVANCE, default="off",
                   help="aol: both systems weigh each training pair's cost by its click count "
                        "(PECOS: R with rel_mode induce; qac: TrainConfig.relevance)")
    p.add_argument("--skip-pecos", action="store_true")
    p.add_argument("--skip-qac", action="store_true")
    p.add_argument("--force", action="store_true", help="redo stages whose output exists")
    p.add_argument("--stage-timeout", type=float, default=0,
                   help="kill a train/eval stage after this many seconds (0 = no limit)")
    p = sub.add_parser("report", help="print the table of bench-out/<task>.json")
    p.add_argument("name")
    q = sub.add_parser("qac-side", help="(child) one qac stage")
    q.add_argument("step", choices=("train", "eval"))
    q.add_argument("--data", required=True)
    q.add_argument("--model", required=True)
    q.add_argument("--out", required=True)
    q.add_argument("--threads", type=int, default=2)
    q.add_argument("--beam", type=int, default=10)
    q.add_argument("--topk", type=int, default=10)
    q.add_argument("--latency-sample", type=int, default=5000)
    q.add_argument("--warmup", type=int, default=200)
    q.add_argument("--relevance", choices=_RELEVANCE, default="off")
    a = ap.parse_args()
    if a.cmd == "run":
        run(a)
    elif a.cmd == "report":
        print(table(json.loads((ROOT / "bench-out" / f"{a.name}.json").read_text())))
    elif a.step == "train":
        qac_train(a)
    else:
        qac_eval(a)


if __name__ == "__main__":
    main()

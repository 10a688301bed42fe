"""The only importer of the compiled ``qac._native`` module.

Every other module calls the plain functions and classes here, which take and
return numpy arrays. Shapes and dtypes are checked once at this boundary; a
non-zero status from C becomes a typed exception from :mod:`qac.errors`, or
``MemoryError`` for ``QAC_E_NOMEM``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from qac.errors import InputError, KernelError, QacError
from qac.model.weights import child_dtype, row_fence

try:
    from qac._native import ffi, lib
except ImportError as exc:  # pragma: no cover - only without a built extension
    raise QacError(
        "qac's C kernel is not built: install the package with `pip install .` "
        "(or `python native/build_ffi.py` in a source checkout)"
    ) from exc

ABI_VERSION = 4


def check(code: int, what: str) -> None:
    """Raise the exception matching a C status code (0 is success)."""
    if code == 0:
        return
    text = ffi.string(lib.qac_strerror(code)).decode()
    if code in (lib.QAC_E_INPUT, lib.QAC_E_UTF8):
        raise InputError(f"{what}: {text}")
    if code == lib.QAC_E_NOMEM:
        raise MemoryError(f"{what}: {text}")
    raise KernelError(f"{what}: {text} (code {code})", code)


def abi_version() -> int:
    return int(lib.qac_abi_version())


if abi_version() != ABI_VERSION:  # pragma: no cover - stale build
    raise QacError(
        f"qac._native has ABI {abi_version()}, Python side expects {ABI_VERSION}: rebuild it"
    )


def as_c(arr: np.ndarray, dtype: Any, name: str) -> np.ndarray:
    """Return ``arr`` as a C-contiguous array of ``dtype`` (copying only if needed)."""
    out = np.ascontiguousarray(arr, dtype=dtype)
    if out.ndim != 1:
        raise InputError(f"{name}: expected a 1-d array, got shape {arr.shape}")
    return out


def ptr(arr: np.ndarray, ctype: str) -> Any:
    """A typed cffi pointer into a C-contiguous numpy array (no copy)."""
    return ffi.cast(ctype, ffi.from_buffer(arr))


# --- index ---


def split_clusters(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    n_cols: int,
    order: np.ndarray,
    cluster_ptr: np.ndarray,
    seed: int,
    max_iter: int,
    threads: int,
) -> None:
    """One binary level of balanced spherical 2-means, in place on ``order``.

    CSR embedding (indptr int64 [L+1], indices int32, data float32) of L labels.
    ``order`` (int32, C-contiguous, modified in place) lists labels cluster by
    cluster as delimited by ``cluster_ptr`` (int64 [C+1]); afterwards cluster c's
    first ceil(n/2) members form child 2c and the rest child 2c+1.
    """
    indptr = as_c(indptr, np.int64, "indptr")
    indices = as_c(indices, np.int32, "indices")
    data = as_c(data, np.float32, "data")
    cluster_ptr = as_c(cluster_ptr, np.int64, "cluster_ptr")
    if order.dtype != np.int32 or order.ndim != 1 or not order.flags.c_contiguous:
        raise InputError("order: expected a C-contiguous 1-d int32 array")
    if not order.flags.writeable:
        raise InputError("order: must be writeable")
    n_rows = indptr.shape[0] - 1
    if n_rows < 0 or indices.shape[0] != data.shape[0] or cluster_ptr.shape[0] < 1:
        raise InputError(
            f"split_clusters: inconsistent shapes indptr {indptr.shape}, "
            f"indices {indices.shape}, data {data.shape}, cluster_ptr {cluster_ptr.shape}"
        )
    if int(indptr[-1]) != indices.shape[0]:
        raise InputError(f"indptr[-1] = {int(indptr[-1])} but nnz = {indices.shape[0]}")
    code = lib.qac_split_clusters(
        ptr(indptr, "int64_t *"),
        ptr(indices, "int32_t *"),
        ptr(data, "float *"),
        n_rows,
        n_cols,
        indices.shape[0],
        ptr(order, "int32_t *"),
        order.shape[0],
        ptr(cluster_ptr, "int64_t *"),
        cluster_ptr.shape[0] - 1,
        seed & 0xFFFFFFFFFFFFFFFF,
        max_iter,
        threads,
    )
    check(code, "qac_split_clusters")


# --- infer ---

POST_CODES = {"l3-hinge": "QAC_POST_L3HINGE", "sigmoid": "QAC_POST_SIGMOID"}


def post_code(post: str) -> int:
    """The QAC_POST_* code of a post-processor name ("l3-hinge" or "sigmoid")."""
    if post not in POST_CODES:
        raise InputError(f"post: expected one of {sorted(POST_CODES)}, got {post!r}")
    return int(getattr(lib, POST_CODES[post]))


def model_new(
    child_ptr: list[np.ndarray],
    layers: list[dict[str, np.ndarray]],
    label_order: np.ndarray | None,
    spans: np.ndarray | None,
    n_features: int,
    post: int,
    powers: list[float] | None = None,
) -> Any:
    """Wrap validated C-contiguous arrays in a ``qac_model_t*`` (freed by the GC).

    ``layers``: the packed LayerWeights arrays by name; ``spans``: int32 from
    :func:`model_spans` of the same arrays, or None to compute them in C; ``powers``:
    per layer, the power of its post-processed score (None: all 1).
    The handle points into the arrays: the caller must keep them alive at least
    as long as the handle. Raises KernelError(QAC_E_RANGE) for inconsistent arrays.
    """
    views = ffi.new("qac_layer_view[]", len(layers))
    for v, cp, lw in zip(views, child_ptr, layers, strict=True):
        v.child_ptr, v.n_child_ptr = ptr(cp, "int64_t *"), cp.shape[0]
        v.chunk_ptr, v.n_chunk_ptr = ptr(lw["chunk_ptr"], "int64_t *"), lw["chunk_ptr"].shape[0]
        v.chunk_ent, v.n_chunk_ent = ptr(lw["chunk_ent"], "int64_t *"), lw["chunk_ent"].shape[0]
        v.row_feat, v.n_row_feat = ptr(lw["row_feat"], "int32_t *"), lw["row_feat"].shape[0]
        v.row_end, v.n_row_end = ptr(lw["row_end"], "int32_t *"), lw["row_end"].shape[0]
        v.row_fence, v.n_row_fence = ptr(lw["row_fence"], "int32_t *"), lw["row_fence"].shape[0]
        v.ent_child, v.n_ent_child = ptr(lw["ent_child"], "void *"), lw["ent_child"].shape[0]
        v.ent_val, v.n_ent_val = ptr(lw["ent_val"], "void *"), lw["ent_val"].shape[0]
        v.bias, v.n_bias = ptr(lw["bias"], "float *"), lw["bias"].shape[0]
        v.child_bytes = lw["ent_child"].dtype.itemsize
        v.val_bytes = lw["ent_val"].dtype.itemsize
    if label_order is None:
        lo_ptr, n_labels = ffi.NULL, 0
    else:
        lo_ptr, n_labels = ptr(label_order, "int32_t *"), label_order.shape[0]
    sp_ptr, n_spans = (ffi.NULL, 0) if spans is None else (ptr(spans, "int32_t *"), spans.size)
    out = ffi.new("qac_model_t **")
    check(
        lib.qac_model_new(len(layers), views, lo_ptr, n_labels, sp_ptr, n_spans, n_features,
                          post, ffi.NULL if powers is None else ffi.new("float[]", powers),
                          out),
        "qac_model_new",
    )
    return ffi.gc(out[0], lib.qac_model_free)


def model_spans(model: Any) -> np.ndarray:
    """int32 [n_inner, 4]: the label-id spans under every inner node (saved with a model
    so that loading reads them in place instead of rebuilding them per process)."""
    n = ffi.new("size_t *")
    check(lib.qac_model_spans(model, ffi.NULL, 0, n), "qac_model_spans")
    out = np.empty(int(n[0]), dtype=np.int32)
    check(lib.qac_model_spans(model, ptr(out, "int32_t *"), out.size, n), "qac_model_spans")
    return out.reshape(-1, 4)


def scratch_new(model: Any, max_beam: int, max_topk: int) -> Any:
    """A ``qac_scratch_t*`` for ``model`` (freed by the GC); one per thread."""
    out = ffi.new("qac_scratch_t **")
    check(lib.qac_scratch_new(model, max_beam, max_topk, out), "qac_scratch_new")
    return ffi.gc(out[0], lib.qac_scratch_free)


def model_predict(
    model: Any,
    scratch: Any,
    idx: np.ndarray,
    val: np.ndarray,
    beam: int,
    topk: int,
    lo: int,
    hi: int,
) -> tuple[np.ndarray, np.ndarray]:
    """One query (int32 idx, float32 val, C-contiguous); ids/scores trimmed to the count."""
    ids = np.empty(topk, dtype=np.int32)
    scores = np.empty(topk, dtype=np.float32)
    n = ffi.new("size_t *")
    check(
        lib.qac_model_predict(
            model,
            scratch,
            ffi.from_buffer("int32_t[]", idx),
            ffi.from_buffer("float[]", val),
            idx.shape[0],
            beam,
            topk,
            lo,
            hi,
            ffi.from_buffer("int32_t[]", ids, require_writable=True),
            ffi.from_buffer("float[]", scores, require_writable=True),
            ids.shape[0],
            n,
        ),
        "qac_model_predict",
    )
    return ids[: n[0]], scores[: n[0]]


def model_predict_batch(
    model: Any,
    indptr: np.ndarray,
    idx: np.ndarray,
    val: np.ndarray,
    beam: int,
    topk: int,
    threads: int,
) -> tuple[np.ndarray, np.ndarray]:
    """A CSR batch (int64 indptr, int32 idx, float32 val): (n, topk) ids padded -1, scores 0."""
    n_rows = indptr.shape[0] - 1
    ids = np.empty((n_rows, topk), dtype=np.int32)
    scores = np.empty((n_rows, topk), dtype=np.float32)
    check(
        lib.qac_model_predict_batch(
            model,
            ptr(indptr, "int64_t *"),
            ptr(idx, "int32_t *"),
            ptr(val, "float *"),
            idx.shape[0],
            n_rows,
            beam,
            topk,
            threads,
            ffi.from_buffer("int32_t[]", ids, require_writable=True),
            ffi.from_buffer("float[]", scores, require_writable=True),
            ids.size,
        ),
        "qac_model_predict_batch",
    )
    return ids, scores


# --- train ---

SOLVERS = {"l2svm": 0, "logreg": 1}


def train_layer(
    x_ptr: np.ndarray,
    x_idx: np.ndarray,
    x_val: np.ndarray,
    n_features: int,
    child_ptr: np.ndarray,
    n_nodes: int,
    pos_ptr: np.ndarray,
    pos_node: np.ndarray,
    route_ptr: np.ndarray,
    route_inst: np.ndarray,
    *,
    pos_cost: np.ndarray | None = None,
    solver: str,
    Cp: float,
    Cn: float,
    eps: float,
    max_iter: int,
    bias: float,
    threshold: float,
    seed: int,
    threads: int,
    max_chunk_entries: int = 2**31 - 1,
    on_progress: Any = None,
) -> dict[str, np.ndarray]:
    """Train one layer's rankers in C; return the packed LayerWeights arrays by name
    (float32 weights; ``ent_child`` in the narrowest dtype the fan-out allows).

    X is CSR (x_ptr int64 [n+1], x_idx int32, x_val float32); pos_* is CSR instance ->
    positive node ids at this layer; ``pos_cost`` (None: all 1) multiplies Cp for each
    positive; route_* is CSR parent -> instance ids (sorted).
    InputError when one parent's chunk would hold more than ``max_chunk_entries``.
    ``on_progress(done, total)``, if given, is called a few times a second from
    another thread while C trains, and once at the end with done == total (the units:
    parents built, nodes solved, parents assembled).
    """
    if solver not in SOLVERS:
        raise InputError(f"solver: expected one of {sorted(SOLVERS)}, got {solver!r}")
    x_ptr = as_c(x_ptr, np.int64, "x_ptr")
    x_idx = as_c(x_idx, np.int32, "x_idx")
    x_val = as_c(x_val, np.float32, "x_val")
    child_ptr = as_c(child_ptr, np.int64, "child_ptr")
    pos_ptr = as_c(pos_ptr, np.int64, "pos_ptr")
    pos_node = as_c(pos_node, np.int32, "pos_node")
    route_ptr = as_c(route_ptr, np.int64, "route_ptr")
    route_inst = as_c(route_inst, np.int32, "route_inst")
    if pos_cost is not None:
        pos_cost = as_c(pos_cost, np.float32, "pos_cost")
        if pos_cost.shape != pos_node.shape:
            raise InputError(f"pos_cost {pos_cost.shape} and pos_node {pos_node.shape} "
                             "differ in length")
    n = x_ptr.shape[0] - 1
    n_parents = child_ptr.shape[0] - 1
    if n < 0 or n_parents < 0:
        raise InputError("x_ptr and child_ptr need at least one entry")
    if x_idx.shape != x_val.shape:
        raise InputError(f"x_idx {x_idx.shape} and x_val {x_val.shape} differ in length")
    if pos_ptr.shape[0] != n + 1:
        raise InputError(f"pos_ptr: expected {n + 1} entries, got {pos_ptr.shape[0]}")
    if route_ptr.shape[0] != n_parents + 1:
        raise InputError(f"route_ptr: expected {n_parents + 1} entries, got {route_ptr.shape[0]}")
    if n_features < 0 or n_nodes < 0:
        raise InputError(f"n_features={n_features}, n_nodes={n_nodes}: must be >= 0")
    params = ffi.new("qac_train_params_t *")
    params.solver = SOLVERS[solver]
    params.Cp, params.Cn, params.eps = Cp, Cn, eps
    params.max_iter, params.bias, params.threshold = max_iter, bias, threshold
    params.seed = seed & 0xFFFFFFFFFFFFFFFF
    done = ffi.new("uint64_t *")
    params.progress = done if on_progress is not None else ffi.NULL
    out = ffi.new("qac_layer_t **")
    watcher = _watch(done, 2 * n_parents + n_nodes, on_progress) if on_progress else None
    try:
        code = lib.qac_train_layer(
            params,
            n, n_features, ptr(x_ptr, "int64_t *"), ptr(x_idx, "int32_t *"),
            ptr(x_val, "float *"), x_idx.shape[0],
            n_parents, ptr(child_ptr, "int64_t *"), n_nodes,
            ptr(pos_ptr, "int64_t *"), ptr(pos_node, "int32_t *"),
            ffi.NULL if pos_cost is None else ptr(pos_cost, "float *"), pos_node.shape[0],
            ptr(route_ptr, "int64_t *"), ptr(route_inst, "int32_t *"), route_inst.shape[0],
            threads, out,
        )
    finally:
        if watcher is not None:
            watcher()
    check(code, "train_layer")
    handle = ffi.gc(out[0], lib.qac_layer_free)
    sizes = ffi.new("size_t[4]")
    check(lib.qac_layer_sizes(handle, sizes, sizes + 1, sizes + 2, sizes + 3), "train_layer")
    n_rows, n_ent, max_chunk, max_fanout = (int(sizes[i]) for i in range(4))
    if max_chunk > max_chunk_entries:
        raise InputError(
            f"train_layer: one parent's children hold {max_chunk} weights, more than the "
            f"{max_chunk_entries} a chunk can address (int32 row ends): use a tree with "
            "more levels (smaller branching or max_leaf_size), fewer features, or a higher "
            "threshold"
        )
    child = np.dtype(child_dtype(max_fanout))
    arrays = {
        "chunk_ptr": np.empty(n_parents + 1, np.int64),
        "chunk_ent": np.empty(n_parents + 1, np.int64),
        "row_feat": np.empty(n_rows, np.int32),
        "row_end": np.empty(n_rows, np.int32),
        "ent_child": np.empty(n_ent, child),
        "ent_val": np.empty(n_ent, np.float32),
        "bias": np.empty(n_nodes, np.float32),
    }
    check(
        lib.qac_layer_export(
            handle,
            ptr(arrays["chunk_ptr"], "int64_t *"), ptr(arrays["chunk_ent"], "int64_t *"),
            n_parents + 1,
            ptr(arrays["row_feat"], "int32_t *"), ptr(arrays["row_end"], "int32_t *"), n_rows,
            ptr(arrays["ent_child"], "void *"), child.itemsize,
            ptr(arrays["ent_val"], "float *"), n_ent,
            ptr(arrays["bias"], "float *"), n_nodes,
        ),
        "train_layer export",
    )
    ffi.release(handle)
    arrays["row_fence"] = row_fence(arrays["row_feat"])
    return arrays


def _watch(counter: Any, total: int, on_progress: Any) -> Any:
    """Poll a counter the C trainer adds to (the call runs with the GIL released) and
    report ``on_progress(done, total)`` a few times a second; returns the function
    that stops the poller and reports the end."""
    import threading

    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.2):
            on_progress(int(counter[0]), total)

    t = threading.Thread(target=poll, name="qac-train-progress", daemon=True)
    t.start()

    def finish() -> None:
        stop.set()
        t.join()
        on_progress(int(counter[0]), total)

    return finish


# --- features ---
# Thin wrappers over native/features.c (see native/qac_features.h for the ABI).
# Text goes in as UTF-8 bytes: one row as a list of per-field bytes, many rows as
# one concatenated buffer per field plus int64 offsets (n_rows + 1).

_FEAT_SPEC_FIELDS = (
    "kind", "field", "ngram_min", "ngram_max", "sublinear_tf", "open_end",
    "position_decay", "weight", "n_features",
)


def _feat_specs(specs: Any) -> Any:
    rows = []
    for s in specs:
        missing = [k for k in _FEAT_SPEC_FIELDS if k not in s]
        if missing:
            raise InputError(f"block spec: missing {missing}")
        rows.append({k: s[k] for k in _FEAT_SPEC_FIELDS})
    return ffi.new("qac_block_spec_t[]", rows)


def featurizer_index(specs: Any, keys: np.ndarray) -> np.ndarray:
    """The uint32 directory ``featurizer_new`` needs for ``keys`` (see qac_features.h)."""
    c_specs = _feat_specs(specs)
    keys = as_c(keys, np.uint64, "keys")
    n = ffi.new("size_t *")
    kp = ptr(keys, "uint64_t *")
    check(lib.qac_featurizer_index(c_specs, len(c_specs), kp, keys.size, ffi.NULL, 0, n),
          "qac_featurizer_index")
    out = np.empty(int(n[0]), dtype=np.uint32)
    check(lib.qac_featurizer_index(c_specs, len(c_specs), kp, keys.size,
                                   ptr(out, "uint32_t *"), out.size, n),
          "qac_featurizer_index")
    return out


def featurizer_new(specs: Any, keys: np.ndarray, idf: np.ndarray, directory: np.ndarray) -> Any:
    """Build a ``qac_featurizer_t *`` (freed by the garbage collector).

    ``specs``: mappings with the ``qac_block_spec_t`` fields; ``keys`` uint64 and
    ``idf`` float32 of length n_features, ``directory`` the uint32 array of
    :func:`featurizer_index`. C reads the three arrays in place (no copy; they may be
    read-only memory maps): the caller keeps them alive as long as the handle.
    KernelError(QAC_E_RANGE) when the directory does not fit the keys.
    """
    c_specs = _feat_specs(specs)
    for name, arr, dtype in (("keys", keys, np.uint64), ("idf", idf, np.float32),
                             ("directory", directory, np.uint32)):
        if arr.dtype != dtype or arr.ndim != 1 or not arr.flags.c_contiguous:
            raise InputError(f"{name}: expected a C-contiguous 1-d {np.dtype(dtype).name} array")
    if keys.shape != idf.shape:
        raise InputError(f"keys/idf: lengths differ ({keys.size} != {idf.size})")
    out = ffi.new("qac_featurizer_t **")
    check(
        lib.qac_featurizer_new(
            c_specs, len(c_specs), ptr(keys, "uint64_t *"), ptr(idf, "float *"), keys.size,
            ptr(directory, "uint32_t *"), directory.size, out
        ),
        "qac_featurizer_new",
    )
    return ffi.gc(out[0], lib.qac_featurizer_free)


def featurize_max_capacity(handle: Any) -> int:
    cap = ffi.new("size_t *")
    check(lib.qac_featurize_max_capacity(handle, cap), "qac_featurize_max_capacity")
    return int(cap[0])


class RowFeaturizer:
    """Per-thread reusable output buffers for ``qac_featurize`` on one handle.

    ``__call__(text, context)`` featurizes one two-field row (UTF-8 bytes) and
    returns fresh (int32 ids, float32 values) arrays. Not thread-safe itself:
    keep one per thread (``Vectorizer`` does).
    """

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.cap = featurize_max_capacity(handle)
        self.idx = np.empty(max(self.cap, 1), dtype=np.int32)
        self.val = np.empty(max(self.cap, 1), dtype=np.float32)
        self._idx_p = ptr(self.idx, "int32_t *")
        self._val_p = ptr(self.val, "float *")
        self._nnz = ffi.new("size_t *")

    def __call__(self, text: bytes, context: bytes) -> tuple[np.ndarray, np.ndarray]:
        code = lib.qac_featurize2(
            self.handle, text, len(text), context, len(context),
            self._idx_p, self._val_p, self.cap, self._nnz,
        )
        if code:
            check(code, "qac_featurize")
        n = self._nnz[0]
        return self.idx[:n].copy(), self.val[:n].copy()


def featurize_raw(
    handle: Any, fields: list[bytes], lens: list[int], cap: int
) -> tuple[int, np.ndarray, np.ndarray]:
    """``qac_featurize`` with caller-chosen lengths/capacity (tests: bad bytes, small cap)."""
    idx = np.empty(max(cap, 1), dtype=np.int32)
    val = np.empty(max(cap, 1), dtype=np.float32)
    nnz = ffi.new("size_t *")
    bufs = [ffi.from_buffer(f) for f in fields]
    c_fields = ffi.new("char *[]", [ffi.cast("char *", b) for b in bufs] or [ffi.NULL])
    code = lib.qac_featurize(
        handle, c_fields, lens, len(fields), ptr(idx, "int32_t *"), ptr(val, "float *"), cap,
        nnz,
    )
    return int(code), idx[: nnz[0]].copy(), val[: nnz[0]].copy()


def _columns(columns: list[tuple[bytes, np.ndarray]], n_rows: int) -> tuple[Any, Any, list[Any]]:
    keep: list[Any] = []
    bufs = ffi.new("char *[]", max(len(columns), 1))
    offs = ffi.new("int64_t *[]", max(len(columns), 1))
    for i, (buf, off) in enumerate(columns):
        off = as_c(off, np.int64, f"offsets[{i}]")
        if off.size != n_rows + 1:
            raise InputError(f"offsets[{i}]: expected {n_rows + 1} entries, got {off.size}")
        if off[0] < 0 or off[-1] > len(buf):
            raise InputError(f"offsets[{i}]: outside the {len(buf)}-byte buffer")
        b = ffi.from_buffer(buf)
        keep += [b, off]
        bufs[i] = ffi.cast("char *", b)
        offs[i] = ptr(off, "int64_t *")
    return bufs, offs, keep


def featurize_batch(
    handle: Any, columns: list[tuple[bytes, np.ndarray]], n_rows: int, n_threads: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR (indptr int64, indices int32, data float32) of many rows, two passes in C.

    ``columns[i] = (buffer, offsets)``: field i of row r is
    ``buffer[offsets[r]:offsets[r+1]]``.
    """
    bufs, offs, keep = _columns(columns, n_rows)
    indptr = np.empty(n_rows + 1, dtype=np.int64)
    check(
        lib.qac_featurize_batch_count(
            handle, bufs, offs, len(columns), n_rows, n_threads, ptr(indptr, "int64_t *"),
            indptr.size,
        ),
        "qac_featurize_batch_count",
    )
    nnz = int(indptr[-1])
    idx = np.empty(max(nnz, 1), dtype=np.int32)
    val = np.empty(max(nnz, 1), dtype=np.float32)
    check(
        lib.qac_featurize_batch(
            handle, bufs, offs, len(columns), n_rows, n_threads, ptr(indptr, "int64_t *"),
            ptr(idx, "int32_t *"), ptr(val, "float *"), nnz,
        ),
        "qac_featurize_batch",
    )
    del keep
    return indptr, idx[:nnz], val[:nnz]


def extract_keys(
    spec: Any, block_index: int, buf: bytes, offsets: np.ndarray, n_threads: int
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct n-gram keys of each row for one block: (keys uint64, row_ptr int64)."""
    c_spec = _feat_specs([spec])
    offsets = as_c(offsets, np.int64, "offsets")
    n_rows = offsets.size - 1
    if n_rows < 0 or offsets[0] < 0 or offsets[-1] > len(buf):
        raise InputError(f"offsets: need >= 1 entries inside the {len(buf)}-byte buffer")
    cap = ffi.new("size_t *")
    check(
        lib.qac_extract_capacity(c_spec, ptr(offsets, "int64_t *"), n_rows, cap),
        "qac_extract_capacity",
    )
    keys = np.empty(max(int(cap[0]), 1), dtype=np.uint64)
    row_ptr = np.empty(n_rows + 1, dtype=np.int64)
    b = ffi.from_buffer(buf)
    check(
        lib.qac_extract_keys(
            c_spec, block_index, ffi.cast("char *", b), ptr(offsets, "int64_t *"), n_rows,
            n_threads, ptr(keys, "uint64_t *"), keys.size, ptr(row_ptr, "int64_t *"),
            row_ptr.size,
        ),
        "qac_extract_keys",
    )
    return keys[: int(row_ptr[-1])], row_ptr


# --- pipeline ---


class TextSearch:
    """The fused per-query path: featurize + beam search in one C call.

    ``featurizer`` is a ``qac_featurizer_t *``; ``model`` an object with ``handle``
    (``qac_model_t *``) and ``scratch_for_thread(beam, topk)``. Output and feature
    buffers are per thread (threading.local) and reused, so a call allocates only
    its two result lists.
    """

    def __init__(self, featurizer: Any, model: Any) -> None:
        import threading

        cap = ffi.new("size_t *")
        check(lib.qac_featurize_max_capacity(featurizer, cap), "qac_featurize_max_capacity")
        self._feat_cap = int(cap[0])
        self._featurizer = featurizer
        self._model = model
        self._local = threading.local()

    def _buffers(self, topk: int) -> Any:
        """This thread's buffers, with room for at least ``topk`` answers.

        Everything is allocated before anything is recorded, so a failed
        allocation (e.g. an absurd ``topk``) leaves the old, consistent buffers.
        """
        local = self._local
        if getattr(local, "topk", 0) < topk:
            size = max(topk, 16)
            ids = ffi.new("int32_t[]", size)
            scores = ffi.new("float[]", size)
            if not hasattr(local, "feat_idx"):
                feat_idx = ffi.new("int32_t[]", self._feat_cap)
                feat_val = ffi.new("float[]", self._feat_cap)
                local.n = ffi.new("size_t *")
                local.feat_idx, local.feat_val = feat_idx, feat_val
            local.ids, local.scores = ids, scores
            local.topk = size
        return local

    def __call__(self, text: str, context: str | None, topk: int, beam: int, lo: int,
                 hi: int) -> tuple[list[int], list[float]]:
        """Top ``topk`` label ids in [lo, hi) and their scores, best first."""
        b = self._buffers(topk)
        t = text.encode("utf-8")
        c = context.encode("utf-8") if context else b""
        check(
            lib.qac_predict_text(
                self._featurizer, self._model.handle, self._model.scratch_for_thread(beam, topk),
                t, len(t), c, len(c), beam, topk, lo, hi, b.feat_idx, b.feat_val,
                self._feat_cap, b.ids, b.scores, b.topk, b.n,
            ),
            "qac_predict_text",
        )
        n = b.n[0]
        return ffi.unpack(b.ids, n), ffi.unpack(b.scores, n)


# --- answerer (native/qac_answer.h) ---

#: the pool ranker's features and the candidate sources, as the kernel declares them
FEATURES: tuple[str, ...] = tuple(
    ffi.string(lib.qac_feature_name(i)).decode() for i in range(int(lib.QAC_NF)))
SOURCES: tuple[str, ...] = tuple(
    ffi.string(lib.qac_source_name(i)).decode() for i in range(int(lib.QAC_NSRC)))


def words_index(text: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The labels' word-start index (``qac_words_index``): (label ids, byte offsets),
    int32, of every word start, sorted by the text from there to the label's end."""
    t = as_c(text, np.uint8, "labels.text")
    off = as_c(offsets, np.int64, "labels.offsets")
    tp = ffi.from_buffer("char[]", t) if t.size else ffi.NULL
    n = ffi.new("size_t *")
    code = lib.qac_words_index(tp, t.size, ptr(off, "int64_t *"), off.size, ffi.NULL,
                               ffi.NULL, 0, n)
    if code != lib.QAC_E_CAPACITY:
        check(code, "qac_words_index")
    label = np.empty(n[0], dtype=np.int32)
    at = np.empty(n[0], dtype=np.int32)
    check(lib.qac_words_index(tp, t.size, ptr(off, "int64_t *"), off.size,
                              ptr(label, "int32_t *"), ptr(at, "int32_t *"), label.size, n),
          "qac_words_index")
    return label, at


def child_table(text: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The sorted labels' child table (``qac_child_table``), int32 [4 * (n + 1)]: the
    typo search's trie, built once with the labels and saved with them."""
    t = as_c(text, np.uint8, "labels.text")
    off = as_c(offsets, np.int64, "labels.offsets")
    out = np.empty(4 * off.size, dtype=np.int32)
    check(lib.qac_child_table(ffi.from_buffer("char[]", t) if t.size else ffi.NULL, t.size,
                              ptr(off, "int64_t *"), off.size, ptr(out, "int32_t *"), out.size),
          "qac_child_table")
    return out


def variant_key(text: str) -> int:
    """The key that names a text's near-duplicates (``qac_variant_key``)."""
    b = text.encode("utf-8", "surrogatepass")
    return int(lib.qac_variant_key(b, len(b)))


class Answer(NamedTuple):
    """What one ``qac_answer`` call gives back (see :meth:`Answerer.answer`)."""

    texts: list[str]
    sources: list[int]
    scores: list[float]
    refs: list[int]
    edits: list[int]   # typo corrections of each answer (0: none)
    visited: int       # trie nodes the typo search visited
    features: np.ndarray | None
    #: each answer's highlight spans: (start, end) code-point offsets into its text
    spans: list[tuple[tuple[int, int], ...]] = []


#: int32 slots of one answer's highlight spans (start, end pairs)
_SPAN_WORDS = 2 * int(lib.QAC_MAX_SPANS)
#: most popular completions the answerer lists itself (qac_extra_view.n_mpc)
MAX_MPC = int(lib.QAC_MAX_MPC)


def _pairs(flat: list[int]) -> tuple[tuple[int, int], ...]:
    return tuple(zip(flat[::2], flat[1::2], strict=True))


def _grown(n: int, at_least: int) -> int:
    """A capacity >= n: the next power of two, at least ``at_least``."""
    return max(at_least, 1 << max(n - 1, 0).bit_length())


class Texts:
    """Queries packed once for many C calls: UTF-8 joined by "\\n", with a count
    (int32) and a time (float64 Unix seconds, <= 0 unknown) each.

    ``texts`` must hold no "\\n" (normalized queries never do); the caller checks.
    """

    __slots__ = ("_blob", "blob", "counts", "n", "nbytes", "texts", "times")

    def __init__(self, texts: list[str], counts: list[int] | None = None,
                 times: list[float] | None = None) -> None:
        n = len(texts)
        if (counts is not None and len(counts) != n) or (times is not None and len(times) != n):
            raise InputError("Texts: texts, counts and times differ in length")
        self.texts = texts
        self.n = n
        self._blob = "\n".join(texts).encode("utf-8", "surrogatepass")
        self.nbytes = len(self._blob)
        self.blob = ffi.from_buffer(self._blob)
        self.counts = ffi.new("int32_t[]", counts if counts is not None else [1] * n)
        self.times = ffi.new("double[]", times if times is not None else [0.0] * n)


class _Buffers:
    """One thread's scratch and input/output arrays for an :class:`Answerer`."""

    __slots__ = ("cap", "ctx", "edits", "ex", "ex_count", "ex_live", "ex_pop", "ex_src",
                 "features", "match", "max_beam", "max_model", "max_prev", "n_in", "n_spans",
                 "out", "ref", "score", "scratch", "source", "sources", "spans", "text",
                 "text_cap")
    cap: int
    text: Any
    text_cap: int
    max_beam: int
    max_model: int
    max_prev: int
    n_in: int
    features: np.ndarray | None
    ctx: Any
    ex: Any
    ex_count: Any
    ex_live: Any
    ex_pop: Any
    ex_src: Any
    edits: Any
    spans: Any
    n_spans: Any
    match: Any
    out: Any
    ref: Any
    score: Any
    scratch: Any
    source: Any
    sources: Any


class Answerer:
    """The completion answerer (``qac_answerer_t``): one keystroke, one C call.

    ``featurizer``/``model``: the engine's handles (``qac_featurizer_t *``,
    ``qac_model_t *``; both None for no beam search). ``labels``: the arrays of
    :class:`qac.complete.LabelSet` (``text`` uint8, UTF-8 of the sorted labels joined
    by "\\n"; ``offsets`` int64 [n+1]; ``popularity`` int64 [n]; ``popcum`` int64
    [n+1] its running sum; ``counts`` int64 [n] the times each was issued in the
    training log, ``recent`` int64 [n] those in its last days; ``word_label`` and
    ``word_off`` int32, the word-start index of :func:`words_index`; ``child_table``
    int32, :func:`child_table`'s). ``forest``: the arrays of
    :class:`qac.rank.Forest` (feature int32, threshold float64, left/right int32,
    leaf float64, roots int32) and its ``base``. The arrays may be read-only
    memory maps; they are kept alive here and C reads them in place.
    """

    def __init__(self, featurizer: Any, model: Any, labels: Mapping[str, np.ndarray],
                 forest: Mapping[str, np.ndarray], base: float, keep: Any = None) -> None:
        import threading

        missing = [k for k in ("text", "offsets", "popularity", "popcum", "counts", "recent",
                               "word_label", "word_off", "child_table") if k not in labels]
        if missing:
            raise InputError(f"Answerer: label arrays {missing} missing")
        a = self._arrays = {
            "labels": as_c(labels["text"], np.uint8, "labels.text"),
            "offsets": as_c(labels["offsets"], np.int64, "labels.offsets"),
            "popularity": as_c(labels["popularity"], np.int64, "labels.popularity"),
            "popcum": as_c(labels["popcum"], np.int64, "labels.popcum"),
            "counts": as_c(labels["counts"], np.int64, "labels.counts"),
            "recent": as_c(labels["recent"], np.int64, "labels.recent"),
            "word_label": as_c(labels["word_label"], np.int32, "labels.word_label"),
            "word_off": as_c(labels["word_off"], np.int32, "labels.word_off"),
            "child_table": as_c(labels["child_table"], np.int32, "labels.child_table"),
            "feature": as_c(forest["feature"], np.int32, "forest feature"),
            "threshold": as_c(forest["threshold"], np.float64, "forest threshold"),
            "left": as_c(forest["left"], np.int32, "forest left"),
            "right": as_c(forest["right"], np.int32, "forest right"),
            "leaf": as_c(forest["leaf"], np.float64, "forest leaf"),
            "roots": as_c(forest["roots"], np.int32, "forest roots"),
        }
        if not a["threshold"].size == a["left"].size == a["right"].size == a["feature"].size:
            raise InputError("forest: feature, threshold, left and right differ in length")
        lab = ffi.new("qac_labels_view *")
        lab.text = ffi.from_buffer("char[]", a["labels"]) if a["labels"].size else ffi.NULL
        lab.text_len = a["labels"].size
        lab.offsets, lab.n_offsets = ptr(a["offsets"], "int64_t *"), a["offsets"].size
        lab.popularity = ptr(a["popularity"], "int64_t *")
        lab.n_popularity = a["popularity"].size
        lab.popcum, lab.n_popcum = ptr(a["popcum"], "int64_t *"), a["popcum"].size
        lab.counts, lab.n_counts = ptr(a["counts"], "int64_t *"), a["counts"].size
        lab.recent, lab.n_recent = ptr(a["recent"], "int64_t *"), a["recent"].size
        if a["word_label"].size != a["word_off"].size:
            raise InputError("labels: word_label and word_off differ in length")
        lab.word_label, lab.word_off = (ptr(a["word_label"], "int32_t *"),
                                        ptr(a["word_off"], "int32_t *"))
        lab.n_words = a["word_label"].size
        lab.tree, lab.n_tree = ptr(a["child_table"], "int32_t *"), a["child_table"].size
        f = ffi.new("qac_forest_view *")
        f.feature, f.threshold = ptr(a["feature"], "int32_t *"), ptr(a["threshold"], "double *")
        f.left, f.right = ptr(a["left"], "int32_t *"), ptr(a["right"], "int32_t *")
        f.n_nodes = a["feature"].size
        f.leaf, f.n_leaves = ptr(a["leaf"], "double *"), a["leaf"].size
        f.roots, f.n_trees = ptr(a["roots"], "int32_t *"), a["roots"].size
        f.base = float(base)
        out = ffi.new("qac_answerer_t **")
        check(lib.qac_answerer_new(ffi.NULL if featurizer is None else featurizer,
                                   ffi.NULL if model is None else model, lab, f, out),
              "qac_answerer_new")
        self.handle = ffi.gc(out[0], lib.qac_answerer_free)
        self._keep = (featurizer, model, keep)
        self._local = threading.local()
        # the longest label in bytes, with its separator: bounds the answers' texts
        off = a["offsets"]
        self._label_bytes = int(np.diff(off).max()) if off.size > 1 else 1

    def label_range(self, prefix: bytes) -> tuple[int, int]:
        """Label ids [lo, hi) of the labels that start with ``prefix`` (UTF-8)."""
        lo, hi = ffi.new("int64_t *"), ffi.new("int64_t *")
        check(lib.qac_label_range(self.handle, prefix, len(prefix), lo, hi), "qac_label_range")
        return int(lo[0]), int(hi[0])


    def _buffers(self, rows: int, beam: int, n_model: int, prev: int, n_in: int,
                 features: bool) -> _Buffers:
        """This thread's buffers, big enough for the call (grown, doubling, before use:
        a size is recorded only once it is allocated)."""
        b: _Buffers | None = getattr(self._local, "b", None)
        if (b is None or b.cap < rows or b.max_beam < beam or b.max_model < n_model
                or b.max_prev < prev or b.n_in < n_in):
            nb = _Buffers()
            cap = _grown(max(rows, n_model), 64 if b is None else b.cap)
            max_beam = _grown(beam, 16 if b is None else b.max_beam)
            max_model = min(cap, _grown(n_model, 16 if b is None else b.max_model))
            max_prev = _grown(prev, 256 if b is None else b.max_prev)
            n_in = _grown(n_in, 64 if b is None else b.n_in)
            out = ffi.new("qac_answer_scratch_t **")
            check(lib.qac_answer_scratch_new(self.handle, cap, max_beam, max_model, max_prev,
                                             out), "qac_answer_scratch_new")
            nb.scratch = ffi.gc(out[0], lib.qac_answer_scratch_free)
            nb.ref = ffi.new("int32_t[]", cap)
            nb.source = ffi.new("int32_t[]", cap)
            nb.sources = ffi.new("uint32_t[]", cap)
            nb.score = ffi.new("double[]", cap)
            nb.edits = ffi.new("int32_t[]", cap)
            nb.spans = ffi.new("int32_t[]", cap * _SPAN_WORDS)
            nb.n_spans = ffi.new("int32_t[]", cap)
            nb.match = ffi.new("qac_match_view *")
            nb.features = None
            nb.ex_src = ffi.new("int32_t[]", n_in)
            nb.ex_count = ffi.new("int64_t[]", n_in)
            nb.ex_pop = ffi.new("int64_t[]", n_in)
            nb.ex_live = ffi.new("double[]", n_in)
            nb.ctx = ffi.new("qac_context_view *")
            nb.ex = ffi.new("qac_extra_view *")
            nb.out = ffi.new("qac_answer_out *")
            nb.out.ref, nb.out.source, nb.out.sources = nb.ref, nb.source, nb.sources
            nb.out.score, nb.out.edits = nb.score, nb.edits
            nb.ex.source, nb.ex.count, nb.ex.popularity = nb.ex_src, nb.ex_count, nb.ex_pop
            nb.cap, nb.max_beam, nb.max_model, nb.max_prev, nb.n_in = (
                cap, max_beam, max_model, max_prev, n_in)
            nb.text, nb.text_cap = (b.text, b.text_cap) if b is not None else (ffi.NULL, 0)
            self._local.b = b = nb
        if features:
            if b.features is None:
                b.features = np.empty((b.cap, len(FEATURES)), dtype=np.float64)
            b.out.features = ptr(b.features.reshape(-1), "double *")
            b.out.features_cap = b.features.size
            b.out.spans, b.out.n_spans = ffi.NULL, ffi.NULL  # the fitting path shows nothing
        else:
            b.out.features, b.out.features_cap = ffi.NULL, 0
            b.out.spans, b.out.n_spans = b.spans, b.n_spans
        return b

    def answer(self, prefix: bytes, prev: bytes, session: Texts, history: Texts,
               extra: Sequence[str], extra_source: Sequence[int], extra_count: Sequence[int],
               extra_pop: Sequence[int], now: float, beam: int, n_model: int, k: int,
               features: bool = False, collapse: bool = False, match: Any = None,
               extra_live: list[float] | None = None, label_live: np.ndarray | None = None,
               live_scale: float = 1.0, n_mpc: int = 0) -> Answer:
        """One keystroke (see native/qac_answer.h): the k best rows, best first
        (``collapse``: near-duplicates as one answer; ``match``: a
        :class:`qac.match.MatchConfig` for typo and word-prefix matches, None for
        none); with ``features``, every row in pool order, and the feature rows
        (float64 [n, len(FEATURES)]). ``ref`` >= 0 is a label id, else -1 - j indexes
        ``extra + history.texts``.

        Live (:mod:`qac.live`): ``extra_live`` a decayed count per extra text (fresh
        queries), ``label_live`` float64 [labels] decayed counts that
        ``live_scale`` brings to now (read in place by C; None: no live counts).

        ``n_mpc``: the most popular labels of the prefix C adds itself (source "mpc",
        ahead of ``extra``, which then holds none of that source); 0: none."""
        n_x = len(extra)
        if not len(extra_source) == len(extra_count) == len(extra_pop) == n_x:
            raise InputError("answer: extra texts and their numbers differ in length")
        if k < 1:
            raise InputError(f"k must be >= 1, got {k}")
        fuzzy = 0 if match is None or features else 2 * match.fuzzy
        if isinstance(n_mpc, bool) or not isinstance(n_mpc, int) or not 0 <= n_mpc <= MAX_MPC:
            raise InputError(f"n_mpc must be an int in 0..{MAX_MPC}, got {n_mpc!r}")
        rows = n_model + history.n + session.n + n_x + n_mpc + fuzzy
        b = self._buffers(rows if features else max(rows, k), beam, n_model, len(prev), n_x,
                          features)
        ext = "\n".join(extra).encode("utf-8", "surrogatepass")
        ctx, ex, out = b.ctx, b.ex, b.out
        keep = (ffi.from_buffer(prev), ffi.from_buffer(ext))
        ctx.prev, ctx.prev_len = keep[0], len(prev)
        ctx.history, ctx.history_len, ctx.n_history = history.blob, history.nbytes, history.n
        ctx.history_count, ctx.history_time = history.counts, history.times
        ctx.session, ctx.session_len, ctx.n_session = session.blob, session.nbytes, session.n
        ctx.session_time = session.times
        ctx.now = now
        if label_live is not None:
            if (label_live.dtype != np.float64 or label_live.ndim != 1
                    or not label_live.flags.c_contiguous):
                raise InputError("answer: label_live must be a contiguous float64 vector")
            live_buf = ffi.from_buffer("double[]", label_live)
            ctx.label_live, ctx.n_label_live, ctx.live_scale = (
                live_buf, label_live.size, live_scale)
        else:
            live_buf = None
            ctx.label_live, ctx.n_label_live, ctx.live_scale = ffi.NULL, 0, 1.0
        ex.text, ex.text_len, ex.n, ex.n_mpc = keep[1], len(ext), n_x, n_mpc
        if extra_live is not None:
            if len(extra_live) != n_x:
                raise InputError("answer: extra texts and their live counts differ in length")
            if n_x:
                b.ex_live[0:n_x] = extra_live
            ex.live = b.ex_live
        else:
            ex.live = ffi.NULL
        if n_x:
            b.ex_src[0:n_x] = extra_source
            b.ex_count[0:n_x] = extra_count
            b.ex_pop[0:n_x] = extra_pop
        out.cap = b.cap if features else k
        # a bound on the answers' bytes: each is a label or one of the texts given
        need = min(out.cap, rows) * self._label_bytes + len(ext) + history.nbytes + 2 * out.cap
        if b.text_cap < need:
            cap = _grown(need, 4096)
            b.text, b.text_cap = ffi.new("char[]", cap), cap
        out.text, out.text_cap = b.text, b.text_cap
        out.collapse = 1 if collapse and not features else 0
        mv = ffi.NULL
        if fuzzy:
            mv = b.match
            mv.words, mv.typos, mv.first_char = int(match.words), match.typos, \
                int(match.first_char)
            mv.one_typo_chars, mv.two_typo_chars = match.one_typo_chars, match.two_typo_chars
            mv.fuzzy, mv.max_visits = match.fuzzy, match.max_visits
        check(lib.qac_answer(self.handle, b.scratch, prefix, len(prefix), ctx, ex, beam,
                             n_model, mv, out), "qac_answer")
        del keep, live_buf
        n = out.n
        X = b.features[:n].copy() if features and b.features is not None else None
        texts = ffi.unpack(b.text, out.text_len).decode("utf-8", "surrogatepass").split(
            "\n") if n else []
        sp = b.spans  # most answers have one span: read it in place
        spans = [] if features else [
            ((sp[o], sp[o + 1]),) if c == 1 else _pairs(ffi.unpack(sp + o, 2 * c)) if c else ()
            for c, o in zip(ffi.unpack(b.n_spans, n), range(0, n * _SPAN_WORDS, _SPAN_WORDS),
                            strict=True)]
        return Answer(texts, ffi.unpack(b.source, n), ffi.unpack(b.score, n),
                      ffi.unpack(b.ref, n), ffi.unpack(b.edits, n), int(out.visited), X, spans)

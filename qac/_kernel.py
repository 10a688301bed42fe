"""The only importer of the compiled ``qac._native`` module.

Every other module calls the plain functions and classes here, which take and
return numpy arrays. Shapes and dtypes are checked once at this boundary; a
non-zero status from C becomes a typed exception from :mod:`qac.errors`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qac.errors import InputError, KernelError, QacError

try:
    from qac._native import ffi, lib
except ImportError as exc:  # pragma: no cover - only without a built extension
    raise QacError(
        "qac's C kernel is not built: install the package with `pip install .` "
        "(or `python native/build_ffi.py` in a source checkout)"
    ) from exc

ABI_VERSION = 1


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
    solver: str,
    Cp: float,
    Cn: float,
    eps: float,
    max_iter: int,
    bias: float,
    threshold: float,
    seed: int,
    threads: int,
) -> dict[str, np.ndarray]:
    """Train one layer's rankers in C; return the LayerWeights arrays by name.

    X is CSR (x_ptr int64 [n+1], x_idx int32, x_val float32); pos_* is CSR instance ->
    positive node ids at this layer; route_* is CSR parent -> instance ids (sorted).
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
    out = ffi.new("qac_layer_t **")
    check(
        lib.qac_train_layer(
            params,
            n, n_features, ptr(x_ptr, "int64_t *"), ptr(x_idx, "int32_t *"),
            ptr(x_val, "float *"), x_idx.shape[0],
            n_parents, ptr(child_ptr, "int64_t *"), n_nodes,
            ptr(pos_ptr, "int64_t *"), ptr(pos_node, "int32_t *"), pos_node.shape[0],
            ptr(route_ptr, "int64_t *"), ptr(route_inst, "int32_t *"), route_inst.shape[0],
            threads, out,
        ),
        "train_layer",
    )
    handle = ffi.gc(out[0], lib.qac_layer_free)
    sizes = ffi.new("size_t[2]")
    check(lib.qac_layer_sizes(handle, sizes, sizes + 1), "train_layer")
    n_rows, n_ent = int(sizes[0]), int(sizes[1])
    arrays = {
        "chunk_ptr": np.empty(n_parents + 1, np.int64),
        "row_feat": np.empty(n_rows, np.int32),
        "row_ptr": np.empty(n_rows + 1, np.int64),
        "ent_node": np.empty(n_ent, np.int32),
        "ent_val": np.empty(n_ent, np.float32),
        "bias": np.empty(n_nodes, np.float32),
    }
    check(
        lib.qac_layer_export(
            handle,
            ptr(arrays["chunk_ptr"], "int64_t *"), ptr(arrays["row_feat"], "int32_t *"),
            ptr(arrays["row_ptr"], "int64_t *"), ptr(arrays["ent_node"], "int32_t *"),
            ptr(arrays["ent_val"], "float *"), ptr(arrays["bias"], "float *"),
        ),
        "train_layer export",
    )
    ffi.release(handle)
    return arrays

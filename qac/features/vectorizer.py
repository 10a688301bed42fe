"""Vectorizer: TF-IDF over several blocks, fitted with numpy, transformed in C."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from qac import _kernel
from qac.errors import InputError, KernelError, ModelFormatError
from qac.features.config import KINDS, BlockConfig

log = logging.getLogger(__name__)

#: 2: keys are mixed (see qac.features) and saved with their directory (``dir``)
FORMAT_VERSION = 2
MAX_BLOCKS = 16  # QAC_FEAT_MAX_BLOCKS
_FIT_CHUNK = 1 << 18  # rows per extraction call while fitting (bounds peak memory)

Column = tuple[bytes, np.ndarray]  # (concatenated UTF-8, int64 offsets [n+1])


def _spec(block: BlockConfig, n_features: int) -> dict[str, Any]:
    lo, hi = block.ngrams
    return {
        "kind": KINDS.index(block.kind),
        "field": block.field,
        "ngram_min": lo,
        "ngram_max": hi,
        "sublinear_tf": int(block.sublinear_tf),
        "open_end": int(block.open_end),
        "position_decay": block.position_decay,
        "weight": block.weight,
        "n_features": n_features,
    }


def _encode_column(values: Sequence[str | None], name: str, allow_none: bool) -> Column:
    enc: list[bytes] = []
    for i, s in enumerate(values):
        if s is None and allow_none:
            enc.append(b"")
            continue
        if not isinstance(s, str):
            raise InputError(f"{name}[{i}]: expected str, got {type(s).__name__}")
        try:
            enc.append(s.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise InputError(f"{name}[{i}]: not encodable as UTF-8 ({exc.reason})") from exc
    offsets = np.zeros(len(enc) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, enc), dtype=np.int64, count=len(enc)), out=offsets[1:])
    return b"".join(enc), offsets


def _check_rows(texts: Any, contexts: Any) -> None:
    if isinstance(texts, str | bytes):
        raise InputError("texts: expected a sequence of str, got a single string")
    if contexts is not None:
        if isinstance(contexts, str | bytes):
            raise InputError("contexts: expected a sequence of str/None, got a single string")
        if len(contexts) != len(texts):
            raise InputError(
                f"contexts: expected {len(texts)} entries (one per text), got {len(contexts)}"
            )


def _encode(texts: Sequence[str], contexts: Sequence[str | None] | None) -> list[Column]:
    _check_rows(texts, contexts)
    cols = [_encode_column(texts, "texts", allow_none=False)]
    if contexts is None:
        cols.append((b"", np.zeros(len(texts) + 1, dtype=np.int64)))
    else:
        cols.append(_encode_column(contexts, "contexts", allow_none=True))
    return cols


class Vectorizer:
    """Multi-block TF-IDF vectorizer (the spec is the qac.features docstring).

    ``fit`` learns each block's vocabulary and idf; ``transform`` gives a CSR
    matrix (float32 data, int32 indices sorted within rows, rows L2-normalized);
    ``transform_one`` gives one row as (int32 ids, float32 values) through a
    single C call. Feature ids of block b are the contiguous range
    ``block_offsets[b]:block_offsets[b+1]``.
    """

    def __init__(self, blocks: Sequence[BlockConfig]) -> None:
        blocks = list(blocks)
        if not 1 <= len(blocks) <= MAX_BLOCKS:
            raise InputError(f"blocks: expected 1..{MAX_BLOCKS} BlockConfig, got {len(blocks)}")
        for i, b in enumerate(blocks):
            if not isinstance(b, BlockConfig):
                raise InputError(f"blocks[{i}]: expected BlockConfig, got {type(b).__name__}")
        self.blocks: tuple[BlockConfig, ...] = tuple(blocks)
        self._handle: Any = None
        self._keys: np.ndarray | None = None
        self._idf: np.ndarray | None = None
        self._dir: np.ndarray | None = None
        self._sizes: tuple[int, ...] = ()
        self._n_fit_rows = 0
        self._local = threading.local()

    # ------------------------------------------------------------ fitting

    def fit(
        self, texts: Sequence[str], contexts: Sequence[str | None] | None = None
    ) -> Vectorizer:
        """Learn vocabularies and idf from ``texts`` (field 0) and ``contexts`` (field 1)."""
        cols = _encode(texts, contexts)
        n_rows = len(texts)
        keys_parts: list[np.ndarray] = []
        idf_parts: list[np.ndarray] = []
        seen = np.zeros(0, dtype=np.uint64)
        for b, block in enumerate(self.blocks):
            uniq, df = self._document_frequencies(b, block, cols[block.field], n_rows)
            if seen.size and uniq.size:
                # a cross-block 64-bit collision: astronomically rare, keep the first block's
                fresh = ~np.isin(uniq, seen)
                uniq, df = uniq[fresh], df[fresh]
            keep = df >= block.min_df
            uniq, df = uniq[keep], df[keep]
            if block.max_features is not None and uniq.size > block.max_features:
                top = np.lexsort((uniq, -df))[: block.max_features]
                top.sort()  # uniq is ascending: keep key order within the block
                uniq, df = uniq[top], df[top]
            idf = idf_of(df, n_rows)
            keys_parts.append(uniq)
            idf_parts.append(idf.astype(np.float32))
            seen = np.concatenate([seen, uniq])
            log.debug("block %d (%s): %d features", b, block.kind, uniq.size)
        self._install(
            np.concatenate(keys_parts), np.concatenate(idf_parts),
            tuple(int(k.size) for k in keys_parts), n_rows,
        )
        return self

    def _document_frequencies(
        self, b: int, block: BlockConfig, col: Column, n_rows: int
    ) -> tuple[np.ndarray, np.ndarray]:
        buf, offsets = col
        spec = _spec(block, 0)
        uniqs: list[np.ndarray] = []
        counts: list[np.ndarray] = []
        for r0 in range(0, n_rows, _FIT_CHUNK):
            r1 = min(n_rows, r0 + _FIT_CHUNK)
            offs = offsets[r0 : r1 + 1]
            keys, _ = _kernel.extract_keys(spec, b, buf, offs, 2)
            u, c = np.unique(keys, return_counts=True)
            uniqs.append(u)
            counts.append(c.astype(np.int64))
        if not uniqs:
            return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
        if len(uniqs) == 1:
            return uniqs[0], counts[0]
        u, inv = np.unique(np.concatenate(uniqs), return_inverse=True)
        return u, np.bincount(inv, weights=np.concatenate(counts), minlength=u.size).astype(
            np.int64
        )

    def _install(
        self, keys: np.ndarray, idf: np.ndarray, sizes: tuple[int, ...], n_fit_rows: int,
        directory: np.ndarray | None = None,
    ) -> None:
        """Wrap the vocabulary in a C featurizer that reads these arrays in place.

        ``directory`` None (fitting): built here, once; a loaded model passes its own.
        """
        specs = [_spec(b, n) for b, n in zip(self.blocks, sizes, strict=True)]
        if directory is None:
            directory = _kernel.featurizer_index(specs, keys)
        self._handle = _kernel.featurizer_new(specs, keys, idf, directory)
        self._keys, self._idf, self._dir, self._sizes = keys, idf, directory, sizes
        self._n_fit_rows = n_fit_rows
        self._local = threading.local()

    # ---------------------------------------------------------- transform

    def _require_fitted(self) -> Any:
        if self._handle is None:
            raise InputError("Vectorizer is not fitted: call fit() or from_parts() first")
        return self._handle

    def transform(
        self,
        texts: Sequence[str],
        contexts: Sequence[str | None] | None = None,
        threads: int = 2,
    ) -> sp.csr_matrix:
        """Rows of features, shape (len(texts), n_features); deterministic for any ``threads``."""
        handle = self._require_fitted()
        cols = _encode(texts, contexts)
        indptr, idx, val = _kernel.featurize_batch(handle, cols, len(texts), int(threads))
        if indptr[-1] <= np.iinfo(np.int32).max:
            indptr = indptr.astype(np.int32)  # scipy wants one index dtype
        m = sp.csr_matrix((val, idx, indptr), shape=(len(texts), self.n_features), copy=False)
        m.has_sorted_indices = True
        return m

    def transform_one(self, text: str, context: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One row as (int32 sorted feature ids, float32 values): the hot path, one C call."""
        rf = getattr(self._local, "rf", None)
        if rf is None or rf.handle is not self._handle:
            rf = self._local.rf = _kernel.RowFeaturizer(self._require_fitted())
        try:
            t = text.encode("utf-8")
            c = context.encode("utf-8") if context else b""
        except (AttributeError, UnicodeEncodeError) as exc:
            raise InputError(f"transform_one: text/context must be str ({exc})") from exc
        result: tuple[np.ndarray, np.ndarray] = rf(t, c)
        return result

    # ------------------------------------------------------------- state

    @property
    def n_features(self) -> int:
        return int(sum(self._sizes))

    @property
    def block_offsets(self) -> np.ndarray:
        """int64 [n_blocks+1]: block b owns feature ids offsets[b]:offsets[b+1]."""
        return np.concatenate([[0], np.cumsum(self._sizes, dtype=np.int64)]).astype(np.int64)

    @property
    def handle(self) -> Any:
        """The cffi ``qac_featurizer_t *`` (alive as long as this Vectorizer)."""
        return self._require_fitted()

    def config(self) -> dict[str, Any]:
        """JSON-able description; with ``arrays()`` it rebuilds the vectorizer."""
        self._require_fitted()
        return {
            "format": FORMAT_VERSION,
            "blocks": [b.to_dict() for b in self.blocks],
            "block_sizes": list(self._sizes),
            "n_fit_rows": self._n_fit_rows,
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """``keys`` uint64 [n_features] (mixed n-gram hashes, ascending within each block),
        ``idf`` float32 [n_features] and ``dir`` uint32, the keys' directory by top bits
        (see ``qac_featurizer_index``): everything C reads, in place, to featurize."""
        self._require_fitted()
        assert self._keys is not None and self._idf is not None and self._dir is not None
        return {"keys": self._keys, "idf": self._idf, "dir": self._dir}

    @classmethod
    def from_parts(cls, config: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Vectorizer:
        """Rebuild from ``config()`` and ``arrays()`` (arrays may be read-only memory maps)."""
        if not isinstance(config, Mapping) or config.get("format") != FORMAT_VERSION:
            got = config.get("format") if isinstance(config, Mapping) else config
            older = isinstance(got, int) and not isinstance(got, bool) and got < FORMAT_VERSION
            raise ModelFormatError(
                f"features config: expected format {FORMAT_VERSION}, got {got!r}"
                + ("; it was built by an older qac: retrain it" if older else "")
            )
        try:
            blocks = [BlockConfig.from_dict(d) for d in config["blocks"]]
            sizes = tuple(int(n) for n in config["block_sizes"])
            n_fit_rows = int(config["n_fit_rows"])
        except (KeyError, TypeError) as exc:
            raise ModelFormatError(f"features config: missing or bad entry ({exc})") from exc
        if len(sizes) != len(blocks) or any(n < 0 for n in sizes):
            raise ModelFormatError(
                f"features config: block_sizes {list(sizes)} do not match {len(blocks)} blocks"
            )
        for name, dtype in (("keys", np.uint64), ("idf", np.float32), ("dir", np.uint32)):
            if name not in arrays:
                raise ModelFormatError(f"features arrays: missing {name!r}")
            a = arrays[name]
            n = sum(sizes) if name != "dir" else a.shape[0]
            if a.dtype != dtype or a.ndim != 1 or a.shape[0] != n or not a.flags.c_contiguous:
                raise ModelFormatError(
                    f"features arrays: {name!r} must be a contiguous {np.dtype(dtype).name}"
                    f"[{n}], got {a.dtype}{list(a.shape)}"
                )
        idf = arrays["idf"]
        if idf.size and not (np.isfinite(idf).all() and float(idf.min()) >= 0):
            raise ModelFormatError("features arrays: 'idf' has negative or non-finite values")
        self = cls(blocks)
        try:
            self._install(arrays["keys"], idf, sizes, n_fit_rows, arrays["dir"])
        except (InputError, KernelError) as exc:
            raise ModelFormatError(f"features arrays: rejected by the kernel ({exc})") from exc
        return self

    def __repr__(self) -> str:
        kinds = ", ".join(f"{b.kind}{b.ngrams}@{b.field}" for b in self.blocks)
        fitted = f"{self.n_features} features" if self._handle is not None else "unfitted"
        return f"Vectorizer([{kinds}], {fitted})"


def idf_of(df: np.ndarray, n_rows: int) -> np.ndarray:
    """The idf formula, ln((1+N)/(1+df)) + 1, as float64 (for references and tests)."""
    return np.log((1.0 + n_rows) / (1.0 + np.asarray(df, dtype=np.float64))) + 1.0


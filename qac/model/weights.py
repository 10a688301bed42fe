"""Per-layer ranker weights in the packed layout the C kernel reads in place.

Layer ``l`` holds one linear ranker per node of that layer. The weights of the
children of parent ``p`` form one chunk: the feature rows any child uses, sorted
by feature id, each row listing (child, weight) entries. A query touches only the
rows of its own features in the chunks of the parents on its beam.

The layout is packed for size (a model is memory-mapped by every worker process,
so its size on disk is its size in the page cache):

- row ends are int32 relative to their chunk, with one int64 entry base per chunk,
  so a model may hold more than 2**31 weights (but one chunk may not);
- an entry names its node by the child's index within its parent, in the narrowest
  of uint8 / uint16 / uint32 that the layer's largest fan-out needs;
- weights are float16 (IEEE half) or float32;
- every 16th row's feature is copied into a small fence array: a lookup searches it
  first (it stays in cache), then one block of 16 rows (about 1/16 of a byte per
  weight; 15-20% faster beam search on the AOL retrieval model).

Per weight that is 3 bytes (uint8 child + float16) where the int32 node id and
float32 weight took 8, plus 8 bytes per row (int32 feature + int32 end) where it
took 12.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FIELDS = ("chunk_ptr", "chunk_ent", "row_feat", "row_end", "row_fence", "ent_child", "ent_val",
          "bias")
#: The dtypes each array may have (the first is the one fixed dtypes must have).
DTYPES: dict[str, tuple[type, ...]] = {
    "chunk_ptr": (np.int64,),
    "chunk_ent": (np.int64,),
    "row_feat": (np.int32,),
    "row_end": (np.int32,),
    "row_fence": (np.int32,),
    "ent_child": (np.uint8, np.uint16, np.uint32),
    "ent_val": (np.float16, np.float32),
    "bias": (np.float32,),
}
#: Entries one chunk (the children of one parent) may hold: int32 relative row ends.
MAX_CHUNK_ENTRIES = 2**31 - 1
VALUE_DTYPES = {"float16": np.float16, "float32": np.float32}
#: row_fence holds every ROW_FENCE-th row's feature (QAC_ROW_FENCE in qac_infer.h)
ROW_FENCE = 16


def row_fence(row_feat: np.ndarray) -> np.ndarray:
    """int32 [ceil(R / ROW_FENCE)]: the lookup fences of a layer's row_feat."""
    return np.ascontiguousarray(row_feat[::ROW_FENCE], dtype=np.int32)


def child_dtype(max_fanout: int) -> type:
    """The narrowest unsigned dtype holding a child's index under ``max_fanout`` children."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if max_fanout <= int(np.iinfo(dt).max) + 1:
            return dt
    raise ValueError(f"a parent with {max_fanout} children: at most 2**32 are supported")


@dataclass(frozen=True)
class LayerWeights:
    """Weights of one tree layer (see the module docstring).

    chunk_ptr: int64 [n_parents+1], rows of parent p are chunk_ptr[p]:chunk_ptr[p+1].
    chunk_ent: int64 [n_parents+1], entries of parent p are chunk_ent[p]:chunk_ent[p+1].
    row_feat:  int32 [R], feature id of each row, strictly increasing within a chunk.
    row_end:   int32 [R], end of row r's entries relative to its chunk's first entry
               (row r starts where the chunk's previous row ends, its first row at 0).
    row_fence: int32 [ceil(R / 16)], row_feat[::16] (see :func:`row_fence`).
    ent_child: uint8 / uint16 / uint32 [E], the child's index within the chunk's parent.
    ent_val:   float16 / float32 [E], the weight.
    bias:      float32 [n_nodes], bias term of each node (times the bias feature value).
    """

    chunk_ptr: np.ndarray
    chunk_ent: np.ndarray
    row_feat: np.ndarray
    row_end: np.ndarray
    row_fence: np.ndarray
    ent_child: np.ndarray
    ent_val: np.ndarray
    bias: np.ndarray

    @property
    def n_parents(self) -> int:
        return int(self.chunk_ptr.shape[0]) - 1

    @property
    def n_nodes(self) -> int:
        return int(self.bias.shape[0])

    @property
    def nnz(self) -> int:
        return int(self.ent_val.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(int(getattr(self, f).nbytes) for f in FIELDS)

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in FIELDS}

    def node_ids(self, child_ptr: np.ndarray) -> np.ndarray:
        """int64 [E]: each entry's node id within the layer (from its parent's child_ptr)."""
        parent = np.repeat(np.arange(self.n_parents, dtype=np.int64), np.diff(self.chunk_ent))
        return np.asarray(child_ptr, np.int64)[parent] + self.ent_child.astype(np.int64)

    def row_starts(self) -> np.ndarray:
        """int64 [R]: each row's first entry, absolute (the inverse of the packing)."""
        rel_start = np.zeros(self.row_end.shape[0], np.int64)
        rel_start[1:] = self.row_end[:-1]
        first = self.chunk_ptr[:-1][np.diff(self.chunk_ptr) > 0]
        rel_start[first] = 0
        chunk_of_row = np.repeat(np.arange(self.n_parents, dtype=np.int64),
                                 np.diff(self.chunk_ptr))
        return np.asarray(self.chunk_ent, np.int64)[chunk_of_row] + rel_start

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> LayerWeights:
        """Build from named arrays, checking dtypes and 1-d shapes (no copies)."""
        out = {}
        for name in FIELDS:
            if name not in arrays:
                raise KeyError(name)
            arr = arrays[name]
            if arr.dtype not in DTYPES[name] or arr.ndim != 1:
                names = " or ".join(np.dtype(d).name for d in DTYPES[name])
                raise ValueError(
                    f"{name}: expected 1-d {names}, got {arr.ndim}-d {arr.dtype}"
                )
            out[name] = arr
        return cls(**out)

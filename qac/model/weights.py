"""Per-layer ranker weights in the chunked layout the C kernel reads.

Layer ``l`` holds one linear ranker per node of that layer. The weights of the
children of parent ``p`` form one chunk: the feature rows any child uses, sorted
by feature id, each row listing (node, weight) entries. A query touches only the
rows of its own features in the chunks of the parents on its beam.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FIELDS = ("chunk_ptr", "row_feat", "row_ptr", "ent_node", "ent_val", "bias")
DTYPES = {
    "chunk_ptr": np.int64,
    "row_feat": np.int32,
    "row_ptr": np.int64,
    "ent_node": np.int32,
    "ent_val": np.float32,
    "bias": np.float32,
}


@dataclass(frozen=True)
class LayerWeights:
    """Weights of one tree layer (see the module docstring).

    chunk_ptr: int64 [n_parents+1], rows of parent p are chunk_ptr[p]:chunk_ptr[p+1].
    row_feat:  int32 [R], feature id of each row, strictly increasing within a chunk.
    row_ptr:   int64 [R+1], entries of row r are row_ptr[r]:row_ptr[r+1].
    ent_node:  int32 [E], node id within the layer (a child of the chunk's parent).
    ent_val:   float32 [E], the weight.
    bias:      float32 [n_nodes], bias term of each node (times the bias feature value).
    """

    chunk_ptr: np.ndarray
    row_feat: np.ndarray
    row_ptr: np.ndarray
    ent_node: np.ndarray
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

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in FIELDS}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> LayerWeights:
        """Build from named arrays, checking dtypes and 1-d shapes (no copies)."""
        out = {}
        for name in FIELDS:
            arr = arrays[name]
            if arr.dtype != DTYPES[name] or arr.ndim != 1:
                raise ValueError(
                    f"{name}: expected 1-d {np.dtype(DTYPES[name]).name}, "
                    f"got {arr.ndim}-d {arr.dtype}"
                )
            out[name] = arr
        return cls(**out)

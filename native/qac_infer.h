/* qac native kernel: infer. Part of the ABI declared by qac.h.
 *
 * Beam search over an XR-Linear label tree whose per-layer rankers are stored
 * in the packed LayerWeights layout (see qac/model/weights.py). The model
 * handle keeps POINTERS to the caller's arrays (no copy; they may be read-only
 * mmaps that the caller keeps alive, so worker processes share one copy);
 * everything is validated once, in O(size), by qac_model_new, so prediction
 * never reads out of bounds.
 */
#ifndef QAC_INFER_H
#define QAC_INFER_H

#include <stddef.h>
#include <stdint.h>

/* QAC_CDEF_BEGIN */
#define QAC_POST_L3HINGE 0 /* t(s) = exp(-max(0, 1-s)^3) */
#define QAC_POST_SIGMOID 1 /* t(s) = 1 / (1 + exp(-s)) */
#define QAC_ROW_FENCE 16   /* row_fence[g] = row_feat[QAC_ROW_FENCE * g] */

/* The arrays of tree layer l (1..D): the tree's child_ptr[l-1] and that
 * layer's packed LayerWeights. Every array comes with its length.
 * Chunk p (the children of parent p) owns rows chunk_ptr[p]..chunk_ptr[p+1]
 * and entries chunk_ent[p]..chunk_ent[p+1]; row r's entries are
 * chunk_ent[p] + [row_end[r-1] (0 for the chunk's first row), row_end[r]),
 * so row ends are int32 relative to their chunk (a chunk holds < 2^31
 * entries; a model may hold more). row_fence holds every QAC_ROW_FENCE-th
 * row_feat of the layer (ceil(R / QAC_ROW_FENCE) entries): the first step of
 * every feature lookup. An entry is a child's index within its parent
 * (uint8/uint16/uint32: child_bytes 1/2/4) and a weight (IEEE half or float:
 * val_bytes 2/4). */
typedef struct {
    const int64_t *child_ptr; size_t n_child_ptr; /* n_{l-1}+1 */
    const int64_t *chunk_ptr; size_t n_chunk_ptr; /* n_{l-1}+1 */
    const int64_t *chunk_ent; size_t n_chunk_ent; /* n_{l-1}+1 */
    const int32_t *row_feat;  size_t n_row_feat;  /* R */
    const int32_t *row_end;   size_t n_row_end;   /* R */
    const int32_t *row_fence; size_t n_row_fence; /* ceil(R / QAC_ROW_FENCE) */
    const void *ent_child;    size_t n_ent_child; /* E */
    const void *ent_val;      size_t n_ent_val;   /* E */
    const float *bias;        size_t n_bias;      /* n_l */
    int32_t child_bytes;
    int32_t val_bytes;
} qac_layer_view;

typedef struct qac_model qac_model_t;
typedef struct qac_scratch qac_scratch_t;

/* Validate and wrap a model. layers[0..depth-1] are tree layers 1..depth.
 * label_order: int32 permutation of 0..n_D-1 (n_labels == n_D), or NULL
 * (n_labels ignored) to return last-layer node ids. spans: NULL (computed
 * here, n_inner*16 bytes) or qac_model_spans of the same arrays, int32
 * [n_spans = 4*n_inner] read in place once checked (n_inner: the nodes of
 * layers 1..depth-1). post: QAC_POST_*; a node of layer l scores
 * t(s)^powers[l-1] times its parent's score (powers: depth finite values
 * > 0, or NULL for all 1). QAC_E_RANGE for any inconsistency of the arrays,
 * QAC_E_INPUT for bad arguments. */
int qac_model_new(size_t depth, const qac_layer_view *layers,
                  const int32_t *label_order, size_t n_labels,
                  const int32_t *spans, size_t n_spans,
                  int64_t n_features, int post, const float *powers, qac_model_t **out);
void qac_model_free(qac_model_t *model);
/* Sizes of a model: depth, n_labels (n_D), n_features. Any out may be NULL. */
int qac_model_info(const qac_model_t *model, size_t *depth, int64_t *n_labels,
                   int64_t *n_features);
/* The label-id spans under every inner node (min, max, and the running max /
 * min over its earlier / later siblings), for saving beside the model:
 * *out_n = 4*n_inner int32; out NULL gives only the count, else QAC_E_CAPACITY
 * when cap < *out_n. */
int qac_model_spans(const qac_model_t *model, int32_t *out, size_t cap, size_t *out_n);

/* Per-thread working memory for predictions with beam <= max_beam and
 * topk <= max_topk on `model` (or any model with no wider node). The scratch
 * keeps no pointer to the model. */
int qac_scratch_new(const qac_model_t *model, size_t max_beam, size_t max_topk,
                    qac_scratch_t **out);
void qac_scratch_free(qac_scratch_t *scratch);

/* One query: idx[0..nnz) sorted, unique, < n_features, val finite.
 * Answers restricted to ids [lo, hi) (0, n_D: all) of the ids returned, i.e.
 * label ids (last-layer node ids without label_order). Nodes with no id in
 * [lo, hi) below them are never scored: pruning uses the [min, max] id range
 * under each node, exact when a node's ids are contiguous (trie order),
 * conservative (it may keep the beam on a node that yields none) otherwise.
 * Writes *out_n <= topk ids (labels, or last-layer nodes without
 * label_order) and their scores, best first (ties: smaller id first), into
 * out_ids / out_scores, each of out_cap entries.
 * No allocation. QAC_E_CAPACITY if beam/topk exceed the scratch's sizes or
 * topk exceeds out_cap. */
int qac_model_predict(const qac_model_t *model, qac_scratch_t *scratch,
                      const int32_t *idx, const float *val, size_t nnz,
                      size_t beam, size_t topk, int64_t lo, int64_t hi,
                      int32_t *out_ids, float *out_scores, size_t out_cap, size_t *out_n);

/* A CSR batch (indptr[0..n_rows], idx/val of length nnz >= indptr[n_rows]),
 * rows split over n_threads pthreads (<= 0: 2). out_ids/out_scores (out_cap
 * entries each, at least n_rows*topk, else QAC_E_CAPACITY) get n_rows*topk
 * entries, padded with -1 / 0. Output does not depend on n_threads. On error
 * the status of the first failing row is returned. */
int qac_model_predict_batch(const qac_model_t *model, const int64_t *indptr,
                            const int32_t *idx, const float *val, size_t nnz,
                            size_t n_rows, size_t beam, size_t topk,
                            int n_threads, int32_t *out_ids, float *out_scores,
                            size_t out_cap);
/* QAC_CDEF_END */

#endif

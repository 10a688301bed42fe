/* qac native kernel: train. Part of the ABI declared by qac.h. */
#ifndef QAC_TRAIN_H
#define QAC_TRAIN_H

#include <stddef.h>
#include <stdint.h>

/* QAC_CDEF_BEGIN */
#define QAC_SOLVER_L2SVM 0  /* L2-regularized L2-loss SVM, dual CD (liblinear -s 1) */
#define QAC_SOLVER_LOGREG 1 /* L2-regularized logistic regression, dual CD (liblinear -s 7) */

typedef struct {
    int solver;        /* QAC_SOLVER_* */
    double Cp;         /* cost of positives, > 0 */
    double Cn;         /* cost of negatives, > 0 */
    double eps;        /* liblinear stopping tolerance, > 0 */
    int max_iter;      /* outer CD iterations, >= 1 */
    double bias;       /* value of the bias feature appended to every instance, >= 0 */
    double threshold;  /* weights with |w| < threshold are dropped (the bias never is) */
    uint64_t seed;     /* per-node RNG seed = f(seed, node id): independent of threads */
    uint64_t *progress; /* NULL, or a counter the trainer adds 1 to per unit done (a
                          parent built, a node solved, a parent assembled: 2 x parents
                          + nodes in all); another thread may read it meanwhile */
} qac_train_params_t;

typedef struct qac_layer qac_layer_t;

/* Train the rankers of one tree layer (every child of every parent).
 * X: CSR n x d (x_ptr[n+1], x_idx/x_val[x_nnz]). child_ptr[n_parents+1] with
 * child_ptr[0] == 0 and child_ptr[n_parents] == n_nodes. pos_ptr[n+1]/pos_node[pos_nnz]:
 * each instance's positive nodes at this layer. pos_cost: NULL, or [pos_nnz] finite
 * multipliers > 0 of Cp, one per positive (cost-sensitive learning: a query's more-clicked
 * items cost more to miss; a positive listed twice costs the larger).
 * route_ptr[n_parents+1]/route_inst[route_nnz]: the instances (strictly increasing) whose
 * training set includes parent p's children.
 * On success *out is a handle to free with qac_layer_free. */
int qac_train_layer(const qac_train_params_t *params,
                    size_t n, size_t d, const int64_t *x_ptr, const int32_t *x_idx,
                    const float *x_val, size_t x_nnz,
                    size_t n_parents, const int64_t *child_ptr, size_t n_nodes,
                    const int64_t *pos_ptr, const int32_t *pos_node, const float *pos_cost,
                    size_t pos_nnz,
                    const int64_t *route_ptr, const int32_t *route_inst, size_t route_nnz,
                    int n_threads, qac_layer_t **out);

/* Sizes of the LayerWeights arrays: row_feat and row_end have n_rows, ent_* n_entries;
 * chunk_ptr and chunk_ent have n_parents+1 and bias n_nodes (as passed to
 * qac_train_layer). max_chunk_entries: the most entries of one parent's chunk (the
 * packed format's int32 row ends address < 2^31); max_fanout: the most children of
 * one parent (which sets the width of a local child id). */
int qac_layer_sizes(const qac_layer_t *h, size_t *n_rows, size_t *n_entries,
                    size_t *max_chunk_entries, size_t *max_fanout);

/* Write the weights into caller-allocated arrays in the packed LayerWeights layout
 * (see qac_layer_view in qac_infer.h): ent_child holds child_bytes (1, 2, 4) per
 * entry. Each array's capacity is given (QAC_E_CAPACITY if below the sizes above);
 * QAC_E_RANGE when a chunk holds >= 2^31 entries or a child index does not fit
 * child_bytes. */
int qac_layer_export(const qac_layer_t *h, int64_t *chunk_ptr, int64_t *chunk_ent,
                     size_t n_chunk, int32_t *row_feat, int32_t *row_end, size_t n_rows,
                     void *ent_child, int32_t child_bytes, float *ent_val, size_t n_ent,
                     float *bias, size_t n_bias);

void qac_layer_free(qac_layer_t *h);
/* QAC_CDEF_END */

#endif

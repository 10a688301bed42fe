/* qac native kernel: kmeans. Part of the ABI declared by qac.h. */
#ifndef QAC_KMEANS_H
#define QAC_KMEANS_H

#include <stddef.h>
#include <stdint.h>

/* QAC_CDEF_BEGIN */
/*
 * One binary level of balanced spherical 2-means (PECOS-style hierarchical
 * k-means): every cluster c = order[cluster_ptr[c] : cluster_ptr[c+1]] of
 * n members is split in place into a first half of ceil(n/2) members and a
 * second half of floor(n/2) members (each half keeps the members' relative
 * order), so cluster c's children are 2c and 2c+1.
 *
 * Rows are labels of the CSR embedding (indptr[n_rows+1], indices/data[nnz],
 * n_cols features). Members are ranked by x . (cA - cB) with spherical
 * centroids cA, cB (ties: earlier member first) until the assignment is stable
 * or max_iter centroid updates were made. Initial centroids: two distinct
 * members drawn from a generator seeded by (seed, c). The result depends only
 * on the inputs and seed, not on n_threads (<= 0 means 2).
 * Cost per iteration O(nnz of the cluster); memory n_threads * n_cols int32
 * plus O(nnz + n) scratch per thread.
 */
int qac_split_clusters(const int64_t *indptr, const int32_t *indices, const float *data,
                       int64_t n_rows, int64_t n_cols, int64_t nnz,
                       int32_t *order, int64_t n_order,
                       const int64_t *cluster_ptr, int64_t n_clusters,
                       uint64_t seed, int32_t max_iter, int32_t n_threads);
/* QAC_CDEF_END */

#endif

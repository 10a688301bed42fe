/*
 * Balanced spherical 2-means splits for the hierarchical k-means label tree.
 *
 * Each cluster is handled by one thread from start to end, so its result does
 * not depend on how many threads run. Within a cluster the embedding rows are
 * copied into a local CSR whose column ids are remapped to the features the
 * cluster touches: an iteration then costs O(nnz of the cluster), not O(d).
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "qac.h"

typedef struct {
    float s;     /* x . (cA - cB); NaN mapped to -inf so the order is total */
    int32_t pos; /* member position within the cluster: the tie-break */
} skey;

typedef struct {
    const int64_t *indptr;
    const int32_t *indices;
    const float *data;
    int64_t n_rows, n_cols;
    int32_t *order;
    const int64_t *cluster_ptr;
    int64_t n_clusters;
    uint64_t seed;
    int32_t max_iter;
    atomic_llong next;  /* next cluster to take */
    atomic_int status;  /* first error, 0 if none */
} job;

/* Per-thread scratch, grown on demand and reused across clusters. */
typedef struct {
    int32_t *map;        /* [n_cols] global feature -> local id, -1 when unused */
    int32_t *feats;      /* local id -> global feature */
    int64_t cap_feats;
    int64_t *lptr;       /* [n+1] local CSR */
    int32_t *lidx;
    float *ldat;
    int64_t cap_nnz, cap_n;
    double *ca, *cb;     /* [dl] centroid sums */
    double *tot;         /* [dl] sum of all members: cb = tot - ca */
    float *diff;         /* [dl] cA/|cA| - cB/|cB| */
    skey *keys;          /* [n] */
    uint8_t *side, *prev;/* [n] 0 = first half, 1 = second half */
    int32_t *tmp;        /* [n] */
} scratch;

static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static int grow(void **p, int64_t *cap, int64_t need, size_t elem) {
    if (need <= *cap) return QAC_OK;
    int64_t c = *cap > 0 ? *cap : 64;
    while (c < need) c *= 2;
    void *q = realloc(*p, (size_t)c * elem);
    if (!q) return QAC_E_NOMEM;
    *p = q;
    *cap = c;
    return QAC_OK;
}

static int reserve(scratch *w, int64_t n, int64_t nnz) {
    if (nnz > w->cap_nnz) {
        int64_t c1 = w->cap_nnz, c2 = w->cap_nnz;
        if (grow((void **)&w->lidx, &c1, nnz, sizeof(int32_t))) return QAC_E_NOMEM;
        if (grow((void **)&w->ldat, &c2, nnz, sizeof(float))) return QAC_E_NOMEM;
        w->cap_nnz = c1 < c2 ? c1 : c2;
    }
    if (n + 1 > w->cap_n) {
        int64_t c[5];
        for (int i = 0; i < 5; i++) c[i] = w->cap_n;
        if (grow((void **)&w->lptr, &c[0], n + 1, sizeof(int64_t))) return QAC_E_NOMEM;
        if (grow((void **)&w->keys, &c[1], n + 1, sizeof(skey))) return QAC_E_NOMEM;
        if (grow((void **)&w->side, &c[2], n + 1, 1)) return QAC_E_NOMEM;
        if (grow((void **)&w->prev, &c[3], n + 1, 1)) return QAC_E_NOMEM;
        if (grow((void **)&w->tmp, &c[4], n + 1, sizeof(int32_t))) return QAC_E_NOMEM;
        int64_t m = c[0];
        for (int i = 1; i < 5; i++) m = c[i] < m ? c[i] : m;
        w->cap_n = m;
    }
    return QAC_OK;
}

static int reserve_feats(scratch *w, int64_t dl) {
    if (dl <= w->cap_feats) return QAC_OK;
    int64_t c[5];
    for (int i = 0; i < 5; i++) c[i] = w->cap_feats;
    if (grow((void **)&w->feats, &c[0], dl, sizeof(int32_t))) return QAC_E_NOMEM;
    if (grow((void **)&w->ca, &c[1], dl, sizeof(double))) return QAC_E_NOMEM;
    if (grow((void **)&w->cb, &c[2], dl, sizeof(double))) return QAC_E_NOMEM;
    if (grow((void **)&w->diff, &c[3], dl, sizeof(float))) return QAC_E_NOMEM;
    if (grow((void **)&w->tot, &c[4], dl, sizeof(double))) return QAC_E_NOMEM;
    int64_t m = c[0];
    for (int i = 1; i < 5; i++) m = c[i] < m ? c[i] : m;
    w->cap_feats = m;
    return QAC_OK;
}

static void scratch_free(scratch *w) {
    free(w->map); free(w->feats); free(w->lptr); free(w->lidx); free(w->ldat);
    free(w->ca); free(w->cb); free(w->tot); free(w->diff); free(w->keys); free(w->side);
    free(w->prev); free(w->tmp);
}

/* a ranks strictly before b: higher score, then earlier member. */
static inline int before(const skey *a, const skey *b) {
    return a->s > b->s || (a->s == b->s && a->pos < b->pos);
}

/* Rearrange a[0..n) so that a[0..k) are the k first keys in `before` order
 * (Hoare/Wirth selection, median-of-three pivot). */
static void select_first(skey *a, int64_t n, int64_t k) {
    int64_t lo = 0, hi = n - 1, kk = k - 1;
    if (k <= 0 || k >= n) return;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        skey x = a[lo], y = a[mid], z = a[hi], p;
        if (before(&x, &y)) p = before(&y, &z) ? y : (before(&x, &z) ? z : x);
        else p = before(&x, &z) ? x : (before(&y, &z) ? z : y);
        int64_t i = lo, j = hi;
        do {
            while (before(&a[i], &p)) i++;
            while (before(&p, &a[j])) j--;
            if (i <= j) {
                skey t = a[i]; a[i] = a[j]; a[j] = t;
                i++; j--;
            }
        } while (i <= j);
        if (j < kk) lo = i;
        if (kk < i) hi = j;
    }
}

/* diff = normalize(ca) - normalize(cb) over dl local features. */
static void centroid_diff(const scratch *w, int64_t dl) {
    double na = 0.0, nb = 0.0;
    for (int64_t f = 0; f < dl; f++) {
        na += w->ca[f] * w->ca[f];
        nb += w->cb[f] * w->cb[f];
    }
    double ia = na > 0.0 ? 1.0 / sqrt(na) : 0.0, ib = nb > 0.0 ? 1.0 / sqrt(nb) : 0.0;
    for (int64_t f = 0; f < dl; f++) w->diff[f] = (float)(w->ca[f] * ia - w->cb[f] * ib);
}

/* Score every member against diff, select the first half, write side[]. */
static void assign(scratch *w, int64_t n) {
    const int64_t *lp = w->lptr;
    for (int64_t i = 0; i < n; i++) {
        float s = 0.0f;
        for (int64_t e = lp[i]; e < lp[i + 1]; e++) s += w->ldat[e] * w->diff[w->lidx[e]];
        if (s != s) s = -INFINITY;
        w->keys[i].s = s;
        w->keys[i].pos = (int32_t)i;
    }
    int64_t half = (n + 1) / 2;
    select_first(w->keys, n, half);
    for (int64_t i = 0; i < half; i++) w->side[w->keys[i].pos] = 0;
    for (int64_t i = half; i < n; i++) w->side[w->keys[i].pos] = 1;
}

static int split_one(const job *jb, scratch *w, int64_t c) {
    int64_t b = jb->cluster_ptr[c], n = jb->cluster_ptr[c + 1] - b;
    int32_t *mem = jb->order + b;
    if (n < 2) return QAC_OK;
    if (n > INT32_MAX) return QAC_E_INPUT;

    /* Local CSR with remapped feature ids. */
    int64_t nnz = 0;
    for (int64_t i = 0; i < n; i++) {
        int32_t r = mem[i];
        if (r < 0 || r >= jb->n_rows) return QAC_E_RANGE;
        nnz += jb->indptr[r + 1] - jb->indptr[r];
    }
    int rc = reserve(w, n, nnz);
    if (rc) return rc;
    int64_t dl = 0, e = 0;
    w->lptr[0] = 0;
    for (int64_t i = 0; i < n; i++) {
        int32_t r = mem[i];
        for (int64_t g = jb->indptr[r]; g < jb->indptr[r + 1]; g++, e++) {
            int32_t f = jb->indices[g];
            if (f < 0 || f >= jb->n_cols) { rc = QAC_E_RANGE; goto unmap; }
            if (w->map[f] < 0) {
                if ((rc = reserve_feats(w, dl + 1))) goto unmap;
                w->map[f] = (int32_t)dl;
                w->feats[dl++] = f;
            }
            w->lidx[e] = w->map[f];
            w->ldat[e] = jb->data[g];
        }
        w->lptr[i + 1] = e;
    }
    if ((rc = reserve_feats(w, dl + 1))) goto unmap;

    /* Seeded initialisation: two distinct members as the centroids. */
    uint64_t st = jb->seed ^ (0xD1B54A32D192ED03ULL * (uint64_t)(c + 1));
    splitmix64(&st);
    int64_t p = (int64_t)(splitmix64(&st) % (uint64_t)n);
    int64_t q = (int64_t)(splitmix64(&st) % (uint64_t)(n - 1));
    if (q >= p) q++;
    memset(w->ca, 0, (size_t)dl * sizeof(double));
    memset(w->cb, 0, (size_t)dl * sizeof(double));
    for (int64_t k = w->lptr[p]; k < w->lptr[p + 1]; k++) w->ca[w->lidx[k]] += w->ldat[k];
    for (int64_t k = w->lptr[q]; k < w->lptr[q + 1]; k++) w->cb[w->lidx[k]] += w->ldat[k];
    centroid_diff(w, dl);
    assign(w, n);

    /* The second centroid's sum is tot - ca, so after the first update an
     * iteration only adds or removes the members that moved: its cost is the
     * scoring pass, O(nnz), plus O(nnz of the movers). */
    memset(w->tot, 0, (size_t)dl * sizeof(double));
    for (int64_t k = 0; k < nnz; k++) w->tot[w->lidx[k]] += w->ldat[k];
    for (int32_t it = 0; it < jb->max_iter; it++) {
        if (it == 0) {
            memset(w->ca, 0, (size_t)dl * sizeof(double));
            for (int64_t i = 0; i < n; i++)
                if (!w->side[i])
                    for (int64_t k = w->lptr[i]; k < w->lptr[i + 1]; k++)
                        w->ca[w->lidx[k]] += w->ldat[k];
        } else {
            for (int64_t i = 0; i < n; i++) {
                if (w->side[i] == w->prev[i]) continue;
                if (w->side[i])
                    for (int64_t k = w->lptr[i]; k < w->lptr[i + 1]; k++)
                        w->ca[w->lidx[k]] -= w->ldat[k];
                else
                    for (int64_t k = w->lptr[i]; k < w->lptr[i + 1]; k++)
                        w->ca[w->lidx[k]] += w->ldat[k];
            }
        }
        for (int64_t f = 0; f < dl; f++) w->cb[f] = w->tot[f] - w->ca[f];
        centroid_diff(w, dl);
        memcpy(w->prev, w->side, (size_t)n);
        assign(w, n);
        if (memcmp(w->prev, w->side, (size_t)n) == 0) break;
    }

    /* Stable partition: first half then second half, each in member order. */
    int64_t a = 0, bb = (n + 1) / 2;
    for (int64_t i = 0; i < n; i++) w->tmp[w->side[i] ? bb++ : a++] = mem[i];
    memcpy(mem, w->tmp, (size_t)n * sizeof(int32_t));

unmap:
    for (int64_t f = 0; f < dl; f++) w->map[w->feats[f]] = -1;
    return rc;
}

static void *worker(void *arg) {
    job *jb = arg;
    scratch w;
    memset(&w, 0, sizeof w);
    w.map = malloc((size_t)(jb->n_cols > 0 ? jb->n_cols : 1) * sizeof(int32_t));
    if (!w.map) {
        int zero = 0;
        atomic_compare_exchange_strong(&jb->status, &zero, QAC_E_NOMEM);
        return NULL;
    }
    for (int64_t f = 0; f < jb->n_cols; f++) w.map[f] = -1;
    for (;;) {
        if (atomic_load(&jb->status) != 0) break;
        int64_t c = (int64_t)atomic_fetch_add(&jb->next, 1);
        if (c >= jb->n_clusters) break;
        int rc = split_one(jb, &w, c);
        if (rc) {
            int zero = 0;
            atomic_compare_exchange_strong(&jb->status, &zero, rc);
            break;
        }
    }
    scratch_free(&w);
    return NULL;
}

int qac_split_clusters(const int64_t *indptr, const int32_t *indices, const float *data,
                       int64_t n_rows, int64_t n_cols, int64_t nnz,
                       int32_t *order, int64_t n_order,
                       const int64_t *cluster_ptr, int64_t n_clusters,
                       uint64_t seed, int32_t max_iter, int32_t n_threads) {
    if (n_rows < 0 || n_cols < 0 || nnz < 0 || n_order < 0 || n_clusters < 0 || max_iter < 0)
        return QAC_E_INPUT;
    if (!indptr || !cluster_ptr) return QAC_E_INPUT;
    if ((nnz > 0 && (!indices || !data)) || (n_order > 0 && !order)) return QAC_E_INPUT;
    if (n_cols > INT32_MAX || n_rows > INT32_MAX) return QAC_E_INPUT;
    if (indptr[0] != 0 || indptr[n_rows] != nnz) return QAC_E_RANGE;
    for (int64_t r = 0; r < n_rows; r++)
        if (indptr[r + 1] < indptr[r]) return QAC_E_RANGE;
    if (cluster_ptr[0] != 0 || cluster_ptr[n_clusters] != n_order) return QAC_E_RANGE;
    for (int64_t c = 0; c < n_clusters; c++)
        if (cluster_ptr[c + 1] < cluster_ptr[c]) return QAC_E_RANGE;

    job jb = {
        .indptr = indptr, .indices = indices, .data = data,
        .n_rows = n_rows, .n_cols = n_cols,
        .order = order, .cluster_ptr = cluster_ptr, .n_clusters = n_clusters,
        .seed = seed, .max_iter = max_iter,
    };
    atomic_init(&jb.next, 0);
    atomic_init(&jb.status, 0);

    int nt = n_threads <= 0 ? 2 : n_threads;
    if ((int64_t)nt > n_clusters) nt = n_clusters > 0 ? (int)n_clusters : 1;
    pthread_t *tids = NULL;
    int started = 0;
    if (nt > 1) {
        tids = malloc((size_t)(nt - 1) * sizeof(pthread_t));
        if (!tids) return QAC_E_NOMEM;
        for (; started < nt - 1; started++)
            if (pthread_create(&tids[started], NULL, worker, &jb) != 0) break;
    }
    worker(&jb);
    for (int i = 0; i < started; i++) pthread_join(tids[i], NULL);
    free(tids);
    /* Helpers that failed to start cost only speed: the calling thread
     * takes every cluster left, and each cluster's result is the same. */
    return atomic_load(&jb.status);
}

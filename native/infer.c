/* Beam search inference for XR-Linear models in the packed LayerWeights layout.
 *
 * Per layer, for every parent p on the beam, the rows of p's chunk (sorted by
 * feature) are intersected with the sorted query; matching rows add x_f * w
 * into a per-child buffer preset with the biases. Children are then scored
 * t(s) * score(p) and streamed through a bounded min-heap of the best K
 * (K = beam, or topk at the last layer), so nothing grows with the branching
 * factor except one float buffer. t <= 1, so a parent scoring below the
 * heap's worst when the heap is full cannot contribute and is skipped.
 *
 * A query may be restricted to label ids [lo, hi) (a prefix's labels, ids
 * being sorted ranks): a child is only scored if the [min, max] id range
 * below it meets [lo, hi), and at the last layer only ids inside enter.
 */
#include "qac.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* Label ids below a node of an inner layer: all lie in [min, max] (min =
 * INT32_MAX, max = -1 when none). pmax / smin: running max of `max` over the
 * node's earlier siblings (itself included) / running min of `min` over its
 * later siblings; both monotone within a parent's children, so the children
 * that may hold ids in [lo, hi) lie in one span found by binary search (the
 * exact span when sibling ranges are sorted and disjoint, as in a trie). */
typedef struct {
    int32_t min, max, pmax, smin;
} span_t;

typedef struct {
    const int64_t *child_ptr;
    const int64_t *chunk_ptr;
    const int64_t *chunk_ent;
    const int32_t *row_feat;
    const int32_t *row_end;
    const int32_t *row_fence; /* row_feat[FENCE * g] for every g */
    const void *ent_child;
    const void *ent_val;
    const float *bias;
    int child_bytes, val_bytes;
    float power; /* a child scores t(s)^power times its parent's score */
    int64_t n_parent, n_node;
    const span_t *span; /* n_node entries; NULL at the last layer (ids: label_order) */
} layer_t;

struct qac_model {
    size_t depth;
    layer_t *layers;
    span_t *span_buf; /* owned when computed here; NULL when the caller's spans are used */
    const int32_t *label_order;
    int64_t n_labels;
    int64_t n_features;
    int64_t max_branch;
    int post;
};

/* Every FENCE-th row's feature, layer-wide: a search first finds a key's block of
 * FENCE rows in this small array (it stays in cache), then searches inside the
 * block (one or two cache lines) instead of walking the whole chunk. */
enum { FENCE = QAC_ROW_FENCE };

typedef struct {
    float score;
    int32_t node;
    int32_t key; /* tie-break id: node id, or label id at the last layer */
} cand_t;

struct qac_scratch {
    size_t max_beam, max_topk;
    int64_t max_branch;
    float *buf;    /* max_branch */
    cand_t *heap;  /* max(max_beam, max_topk) */
    cand_t *beam;  /* max_beam */
};

/* ---- packed values ------------------------------------------------------- */

/* IEEE binary16 -> float: the bits shifted into a float's place, then the
 * exponent rebased by one multiplication (exact for normals and subnormals;
 * infinities and NaNs are refused when a model is built). */
static inline float half_to_float(uint16_t h) {
    union { uint32_t u; float f; } v;
    v.u = (uint32_t)(h & 0x7fffu) << 13;
    v.f *= 0x1p112f;
    v.u |= (uint32_t)(h & 0x8000u) << 16;
    return v.f;
}

__attribute__((always_inline)) static inline float load_val(const void *v, int64_t e, int bytes) {
    return bytes == 2 ? half_to_float(((const uint16_t *)v)[e]) : ((const float *)v)[e];
}

__attribute__((always_inline)) static inline int64_t load_child(const void *c, int64_t e,
                                                                int bytes) {
    return bytes == 1   ? (int64_t)((const uint8_t *)c)[e]
           : bytes == 2 ? (int64_t)((const uint16_t *)c)[e]
                        : (int64_t)((const uint32_t *)c)[e];
}

static inline int val_finite(const void *v, int64_t e, int bytes) {
    if (bytes == 2) return (((const uint16_t *)v)[e] & 0x7c00u) != 0x7c00u;
    return isfinite(((const float *)v)[e]);
}

/* ---- validation ---------------------------------------------------------- */

/* ptr[0] == 0, non-decreasing, ptr[n-1] == end. */
static int check_ptr(const int64_t *ptr, size_t n, int64_t end) {
    if (n == 0 || ptr[0] != 0) return QAC_E_RANGE;
    for (size_t i = 1; i < n; i++)
        if (ptr[i] < ptr[i - 1]) return QAC_E_RANGE;
    return ptr[n - 1] == end ? QAC_OK : QAC_E_RANGE;
}

static int check_view_ptrs(const qac_layer_view *v) {
    if ((v->n_child_ptr && !v->child_ptr) || (v->n_chunk_ptr && !v->chunk_ptr) ||
        (v->n_chunk_ent && !v->chunk_ent) || (v->n_row_feat && !v->row_feat) ||
        (v->n_row_end && !v->row_end) || (v->n_row_fence && !v->row_fence) ||
        (v->n_ent_child && !v->ent_child) ||
        (v->n_ent_val && !v->ent_val) || (v->n_bias && !v->bias))
        return QAC_E_INPUT;
    if (v->child_bytes != 1 && v->child_bytes != 2 && v->child_bytes != 4) return QAC_E_INPUT;
    if (v->val_bytes != 2 && v->val_bytes != 4) return QAC_E_INPUT;
    return QAC_OK;
}

static int check_layer(const qac_layer_view *v, int64_t n_parent, int64_t n_features) {
    int rc = check_view_ptrs(v);
    if (rc) return rc;
    int64_t n_node = (int64_t)v->n_bias;
    if ((int64_t)v->n_child_ptr != n_parent + 1 || (int64_t)v->n_chunk_ptr != n_parent + 1 ||
        (int64_t)v->n_chunk_ent != n_parent + 1)
        return QAC_E_RANGE;
    if (v->n_bias > (size_t)INT32_MAX) return QAC_E_RANGE;
    if ((rc = check_ptr(v->child_ptr, v->n_child_ptr, n_node))) return rc;
    if ((rc = check_ptr(v->chunk_ptr, v->n_chunk_ptr, (int64_t)v->n_row_feat))) return rc;
    if ((rc = check_ptr(v->chunk_ent, v->n_chunk_ent, (int64_t)v->n_ent_child))) return rc;
    if (v->n_row_end != v->n_row_feat || v->n_ent_child != v->n_ent_val) return QAC_E_RANGE;
    if (v->n_row_fence != (v->n_row_feat + FENCE - 1) / FENCE) return QAC_E_RANGE;
    for (size_t g = 0; g < v->n_row_fence; g++)
        if (v->row_fence[g] != v->row_feat[g * FENCE]) return QAC_E_RANGE;
    for (int64_t p = 0; p < n_parent; p++) {
        int64_t fan = v->child_ptr[p + 1] - v->child_ptr[p];
        int64_t r0 = v->chunk_ptr[p], r1 = v->chunk_ptr[p + 1];
        int64_t e0 = v->chunk_ent[p], len = v->chunk_ent[p + 1] - e0;
        /* relative row ends: 0 <= end, non-decreasing, the last one closes the chunk */
        if (len > INT32_MAX || (r0 == r1 && len != 0)) return QAC_E_RANGE;
        int32_t prev = 0;
        for (int64_t r = r0; r < r1; r++) {
            int32_t f = v->row_feat[r], end = v->row_end[r];
            if (f < 0 || f >= n_features) return QAC_E_RANGE;
            if (r > r0 && f <= v->row_feat[r - 1]) return QAC_E_RANGE;
            if (end < prev) return QAC_E_RANGE;
            prev = end;
        }
        if (r1 > r0 && prev != len) return QAC_E_RANGE;
        for (int64_t e = e0; e < e0 + len; e++) {
            if (load_child(v->ent_child, e, v->child_bytes) >= fan) return QAC_E_RANGE;
            if (!val_finite(v->ent_val, e, v->val_bytes)) return QAC_E_RANGE;
        }
    }
    for (size_t c = 0; c < v->n_bias; c++)
        if (!isfinite(v->bias[c])) return QAC_E_RANGE;
    return QAC_OK;
}

static int check_permutation(const int32_t *perm, int64_t n) {
    unsigned char *seen = calloc((size_t)n + 1, 1);
    if (!seen) return QAC_E_NOMEM;
    int rc = QAC_OK;
    for (int64_t i = 0; i < n; i++) {
        int32_t v = perm[i];
        if (v < 0 || v >= n || seen[v]) { rc = QAC_E_RANGE; break; }
        seen[v] = 1;
    }
    free(seen);
    return rc;
}

void qac_model_free(qac_model_t *model) {
    if (!model) return;
    free(model->layers);
    free(model->span_buf);
    free(model);
}

/* The [min, max] label-id span of inner node c of layer i, from the layer below
 * (its spans, or label ids at the last layer). */
static void node_span(const qac_model_t *m, size_t i, int64_t c, int32_t *lo_id,
                      int32_t *hi_id) {
    const layer_t *below = &m->layers[i + 1];
    int32_t a0 = INT32_MAX, b0 = -1;
    for (int64_t k = below->child_ptr[c]; k < below->child_ptr[c + 1]; k++) {
        int32_t a, b;
        if (below->span) {
            a = below->span[k].min;
            b = below->span[k].max;
        } else {
            a = b = m->label_order ? m->label_order[k] : (int32_t)k;
        }
        if (a < a0) a0 = a;
        if (b > b0) b0 = b;
    }
    *lo_id = a0;
    *hi_id = b0;
}

/* Fill (sp writable) or check (given) the spans of inner layers, bottom-up:
 * a node's [min, max] covers its children's; then the running bounds per
 * sibling group. Checking allocates nothing. */
static int spans_of(qac_model_t *m, span_t *fill) {
    for (size_t i = m->depth - 1; i-- > 0;) {
        layer_t *L = &m->layers[i];
        span_t *w = fill ? (span_t *)L->span : NULL;
        for (int64_t c = 0; c < L->n_node; c++) {
            int32_t a, b;
            node_span(m, i, c, &a, &b);
            if (w) {
                w[c].min = a;
                w[c].max = b;
            } else if (L->span[c].min != a || L->span[c].max != b) {
                return QAC_E_RANGE;
            }
        }
        const int64_t *cp = L->child_ptr;
        for (int64_t p = 0; p < L->n_parent; p++) {
            int32_t run = -1;
            for (int64_t c = cp[p]; c < cp[p + 1]; c++) {
                if (L->span[c].max > run) run = L->span[c].max;
                if (w) w[c].pmax = run;
                else if (L->span[c].pmax != run) return QAC_E_RANGE;
            }
            run = INT32_MAX;
            for (int64_t c = cp[p + 1]; c-- > cp[p];) {
                if (L->span[c].min < run) run = L->span[c].min;
                if (w) w[c].smin = run;
                else if (L->span[c].smin != run) return QAC_E_RANGE;
            }
        }
    }
    return QAC_OK;
}

int qac_model_new(size_t depth, const qac_layer_view *layers, const int32_t *label_order,
                  size_t n_labels, const int32_t *spans, size_t n_spans, int64_t n_features,
                  int post, const float *powers, qac_model_t **out) {
    if (!out) return QAC_E_INPUT;
    *out = NULL;
    if (depth == 0 || !layers || n_features < 0 || n_features > (int64_t)INT32_MAX + 1 ||
        (post != QAC_POST_L3HINGE && post != QAC_POST_SIGMOID) || (n_spans && !spans))
        return QAC_E_INPUT;
    for (size_t i = 0; powers && i < depth; i++)
        if (!(powers[i] > 0.0f) || !isfinite(powers[i])) return QAC_E_INPUT;
    int64_t n_parent = 1;
    int rc;
    for (size_t i = 0; i < depth; i++) {
        if ((rc = check_layer(&layers[i], n_parent, n_features))) return rc;
        n_parent = (int64_t)layers[i].n_bias;
    }
    int64_t n_last = n_parent;
    if (label_order) {
        if ((int64_t)n_labels != n_last) return QAC_E_RANGE;
        if ((rc = check_permutation(label_order, n_last))) return rc;
    }
    size_t n_span = 0;
    for (size_t i = 0; i + 1 < depth; i++) n_span += layers[i].n_bias;
    if (spans && n_spans != 4 * n_span) return QAC_E_RANGE;

    qac_model_t *m = calloc(1, sizeof *m);
    if (!m) return QAC_E_NOMEM;
    m->depth = depth;
    m->label_order = label_order;
    m->n_labels = n_last;
    m->n_features = n_features;
    m->post = post;
    m->layers = calloc(depth, sizeof *m->layers);
    const span_t *sp = (const span_t *)spans;
    if (!spans && n_span) {
        m->span_buf = malloc(n_span * sizeof *m->span_buf);
        sp = m->span_buf;
    }
    if (!m->layers || (n_span && !sp)) { qac_model_free(m); return QAC_E_NOMEM; }

    n_parent = 1;
    size_t off = 0;
    for (size_t i = 0; i < depth; i++) {
        const qac_layer_view *v = &layers[i];
        layer_t *L = &m->layers[i];
        L->child_ptr = v->child_ptr;
        L->chunk_ptr = v->chunk_ptr;
        L->chunk_ent = v->chunk_ent;
        L->row_feat = v->row_feat;
        L->row_end = v->row_end;
        L->row_fence = v->row_fence;
        L->ent_child = v->ent_child;
        L->ent_val = v->ent_val;
        L->child_bytes = v->child_bytes;
        L->val_bytes = v->val_bytes;
        L->power = powers ? powers[i] : 1.0f;
        L->bias = v->bias;
        L->n_parent = n_parent;
        L->n_node = (int64_t)v->n_bias;
        for (int64_t p = 0; p < n_parent; p++) {
            int64_t b = L->child_ptr[p + 1] - L->child_ptr[p];
            if (b > m->max_branch) m->max_branch = b;
        }
        if (i + 1 < depth) {
            L->span = sp + off;
            off += (size_t)L->n_node;
        }
        n_parent = L->n_node;
    }
    if ((rc = spans_of(m, m->span_buf))) { qac_model_free(m); return rc; }
    *out = m;
    return QAC_OK;
}

int qac_model_spans(const qac_model_t *model, int32_t *out, size_t cap, size_t *out_n) {
    if (!model || !out_n) return QAC_E_INPUT;
    size_t n = 0;
    for (size_t i = 0; i + 1 < model->depth; i++) n += 4 * (size_t)model->layers[i].n_node;
    *out_n = n;
    if (!out) return QAC_OK;
    if (cap < n) return QAC_E_CAPACITY;
    if (n) memcpy(out, model->layers[0].span, n * sizeof *out);
    return QAC_OK;
}

int qac_model_info(const qac_model_t *model, size_t *depth, int64_t *n_labels,
                   int64_t *n_features) {
    if (!model) return QAC_E_INPUT;
    if (depth) *depth = model->depth;
    if (n_labels) *n_labels = model->n_labels;
    if (n_features) *n_features = model->n_features;
    return QAC_OK;
}

/* ---- scratch ------------------------------------------------------------- */

void qac_scratch_free(qac_scratch_t *s) {
    if (!s) return;
    free(s->buf);
    free(s->heap);
    free(s->beam);
    free(s);
}

int qac_scratch_new(const qac_model_t *model, size_t max_beam, size_t max_topk,
                    qac_scratch_t **out) {
    if (!out) return QAC_E_INPUT;
    *out = NULL;
    if (!model || max_beam == 0 || max_topk == 0 || max_beam > ((size_t)1 << 24) ||
        max_topk > ((size_t)1 << 24))
        return QAC_E_INPUT;
    qac_scratch_t *s = calloc(1, sizeof *s);
    if (!s) return QAC_E_NOMEM;
    size_t k = max_beam > max_topk ? max_beam : max_topk;
    s->max_beam = max_beam;
    s->max_topk = max_topk;
    s->max_branch = model->max_branch;
    s->buf = malloc(((size_t)model->max_branch + 1) * sizeof *s->buf);
    s->heap = malloc(k * sizeof *s->heap);
    s->beam = malloc(max_beam * sizeof *s->beam);
    if (!s->buf || !s->heap || !s->beam) { qac_scratch_free(s); return QAC_E_NOMEM; }
    *out = s;
    return QAC_OK;
}

/* ---- beam search --------------------------------------------------------- */

/* a ranks before b: higher score, then smaller key. */
static inline int better(cand_t a, cand_t b) {
    return a.score > b.score || (a.score == b.score && a.key < b.key);
}

/* Min-heap on `better` (root = worst kept). */
static inline void heap_sift_down(cand_t *h, size_t n, size_t i) {
    cand_t x = h[i];
    for (;;) {
        size_t l = 2 * i + 1;
        if (l >= n) break;
        size_t w = (l + 1 < n && better(h[l], h[l + 1])) ? l + 1 : l;
        if (!better(x, h[w])) break;
        h[i] = h[w];
        i = w;
    }
    h[i] = x;
}

static inline void heap_push(cand_t *h, size_t *n, size_t cap, cand_t c) {
    if (*n < cap) {
        size_t i = (*n)++;
        while (i > 0) {
            size_t p = (i - 1) / 2;
            if (!better(h[p], c)) break;
            h[i] = h[p];
            i = p;
        }
        h[i] = c;
    } else if (better(c, h[0])) {
        h[0] = c;
        heap_sift_down(h, *n, 0);
    }
}

/* Turn the heap into a best-first array (heapsort: the root is the worst). */
static void heap_sort_best_first(cand_t *h, size_t n) {
    for (size_t end = n; end > 1; end--) {
        cand_t worst = h[0];
        h[0] = h[end - 1];
        h[end - 1] = worst;
        heap_sift_down(h, end - 1, 0);
    }
}

/* buf[j - off] += x * W[row] for the entries (local child j) of one row. */
__attribute__((always_inline)) static inline void add_entries(const void *ch, const void *vv,
                                                              int64_t e0, int64_t e1, float x,
                                                              float *buf, int64_t off,
                                                              uint64_t width, int cb, int vb) {
    for (int64_t e = e0; e < e1; e++) {
        uint64_t j = (uint64_t)(load_child(ch, e, cb) - off);
        if (j < width) buf[j] += x * load_val(vv, e, vb);
    }
}

/* First i in [0, n) with a[i] > key (n small: the query). */
static inline size_t upper_bound32(const int32_t *a, size_t n, int32_t key) {
    size_t lo = 0;
    while (lo < n) {
        size_t mid = lo + (n - lo) / 2;
        if (a[mid] <= key) lo = mid + 1; else n = mid;
    }
    return lo;
}

enum { LANES = 8 };

/* buf[c - off] += sum_f x_f W[f, c] for the local children c in
 * [off, off + width) of parent p.
 *
 * The query is first trimmed to the chunk's feature span. Against a long chunk,
 * each query feature is located by a branchless binary search; LANES searches
 * run in lockstep (they share the array and so the step sequence), which lets
 * the CPU overlap their cache misses instead of waiting on each in turn. Short
 * chunks are merged linearly. cb / vb (bytes of a child id / a value) are
 * constants in every specialized copy (score_chunk below). */
__attribute__((always_inline)) static inline void score_chunk_t(
    const layer_t *L, int64_t p, const int32_t *idx, const float *val, size_t nnz, float *buf,
    int64_t off, int64_t width, int cb, int vb) {
    int64_t r0 = L->chunk_ptr[p], n_rows = L->chunk_ptr[p + 1] - r0;
    if (n_rows <= 0 || nnz == 0) return;
    const int32_t *rf = L->row_feat + r0;
    const int32_t *re = L->row_end + r0; /* row k's entries: [k ? re[k-1] : 0, re[k]) */
    int64_t base = L->chunk_ent[p];
    const void *ch = cb == 1   ? (const void *)((const uint8_t *)L->ent_child + base)
                     : cb == 2 ? (const void *)((const uint16_t *)L->ent_child + base)
                               : (const void *)((const uint32_t *)L->ent_child + base);
    const void *vv = vb == 2 ? (const void *)((const uint16_t *)L->ent_val + base)
                             : (const void *)((const float *)L->ent_val + base);
    size_t j0 = upper_bound32(idx, nnz, rf[0] - 1); /* rf[0] >= 0: no overflow */
    size_t j1 = upper_bound32(idx, nnz, rf[n_rows - 1]);
    if (j0 >= j1) return;
    size_t q = j1 - j0;
    if (n_rows <= 4 * (int64_t)q) {
        int64_t r = 0;
        size_t j = j0;
        while (r < n_rows && j < j1) {
            if (rf[r] < idx[j]) r++;
            else if (rf[r] > idx[j]) j++;
            else {
                add_entries(ch, vv, r ? re[r - 1] : 0, re[r], val[j], buf, off,
                            (uint64_t)width, cb, vb);
                r++;
                j++;
            }
        }
        return;
    }
    for (size_t j = j0; j < j1; j += LANES) {
        size_t m = j1 - j < LANES ? j1 - j : LANES;
        const int32_t *bp[LANES];
        int32_t key[LANES];
        for (size_t k = 0; k < LANES; k++) {
            bp[k] = rf;
            key[k] = idx[j + (k < m ? k : m - 1)];
        }
        int64_t len = n_rows;
        if (n_rows >= 4 * FENCE) {
            /* fences g0..g1-1 start inside the chunk; a key below fence g0 lies in the
             * chunk's first rows. The block of FENCE rows searched next is shifted to
             * stay inside the chunk; it always holds the key's lower bound. */
            int64_t g0 = (r0 + FENCE - 1) / FENCE, g1 = (r0 + n_rows + FENCE - 1) / FENCE;
            const int32_t *fc = L->row_fence + g0;
            int64_t nf = g1 - g0;
            const int32_t *fq[LANES];
            for (size_t k = 0; k < LANES; k++) fq[k] = fc;
            for (int64_t fl = nf; fl > 1;) {
                int64_t half = fl >> 1;
                for (size_t k = 0; k < LANES; k++)
                    fq[k] = fq[k][half] <= key[k] ? fq[k] + half : fq[k];
                fl -= half;
            }
            for (size_t k = 0; k < LANES; k++) {
                int64_t start = *fq[k] <= key[k] ? (g0 + (fq[k] - fc)) * FENCE - r0 : 0;
                if (start > n_rows - FENCE) start = n_rows - FENCE;
                bp[k] = rf + start;
            }
            len = FENCE;
        }
        for (; len > 1;) {
            int64_t half = len >> 1;
            for (size_t k = 0; k < LANES; k++)
                bp[k] = bp[k][half] < key[k] ? bp[k] + half : bp[k];
            len -= half;
        }
        /* Matched rows' entries are scattered: fetch the group's row ends, then
         * their entries, before accumulating, so the misses overlap. */
        int64_t hit[LANES];
        float hx[LANES];
        size_t n_hit = 0;
        for (size_t k = 0; k < m; k++) {
            int64_t r = (bp[k] - rf) + (*bp[k] < key[k]);
            if (r < n_rows && rf[r] == key[k]) {
                hit[n_hit] = r;
                hx[n_hit++] = val[j + k];
                __builtin_prefetch(re + r - (r > 0));
            }
        }
        int64_t e0[LANES], e1[LANES];
        for (size_t k = 0; k < n_hit; k++) {
            e0[k] = hit[k] ? re[hit[k] - 1] : 0;
            e1[k] = re[hit[k]];
            __builtin_prefetch((const char *)ch + e0[k] * cb);
            __builtin_prefetch((const char *)vv + e0[k] * vb);
        }
        for (size_t k = 0; k < n_hit; k++)
            add_entries(ch, vv, e0[k], e1[k], hx[k], buf, off, (uint64_t)width, cb, vb);
    }
}

static void score_chunk(const layer_t *L, int64_t p, const int32_t *idx, const float *val,
                        size_t nnz, float *buf, int64_t off, int64_t width) {
    switch (L->child_bytes * 8 + L->val_bytes) {
    case 1 * 8 + 2: score_chunk_t(L, p, idx, val, nnz, buf, off, width, 1, 2); break;
    case 1 * 8 + 4: score_chunk_t(L, p, idx, val, nnz, buf, off, width, 1, 4); break;
    case 2 * 8 + 2: score_chunk_t(L, p, idx, val, nnz, buf, off, width, 2, 2); break;
    case 2 * 8 + 4: score_chunk_t(L, p, idx, val, nnz, buf, off, width, 2, 4); break;
    case 4 * 8 + 2: score_chunk_t(L, p, idx, val, nnz, buf, off, width, 4, 2); break;
    default: score_chunk_t(L, p, idx, val, nnz, buf, off, width, 4, 4); break;
    }
}

/* t(s)^power (power > 0): one exp either way. */
static inline float post_fn(int post, float s, float power) {
    float t;
    if (post == QAC_POST_SIGMOID) {
        t = power == 1.0f ? 1.0f / (1.0f + expf(-s)) : expf(-power * log1pf(expf(-s)));
    } else {
        float h = 1.0f - s;
        h = h > 0.0f ? h : 0.0f;
        t = expf(-power * (h * h * h));
    }
    return t >= 0.0f ? t : 0.0f; /* NaN -> 0 */
}

/* The span [c0, c1) of a parent's children that may hold label ids in
 * [lo, hi): from the first child with pmax >= lo to the first with smin >= hi
 * (binary searches; both bounds are monotone over the siblings). */
static inline void narrow_inner(const span_t *sp, int64_t *c0, int64_t *c1, int64_t lo,
                                int64_t hi) {
    int64_t a = *c0, b = *c1;
    while (a < b) {
        int64_t mid = a + (b - a) / 2;
        if (sp[mid].pmax < lo) a = mid + 1; else b = mid;
    }
    int64_t start = a;
    b = *c1;
    while (a < b) {
        int64_t mid = a + (b - a) / 2;
        if (sp[mid].smin < hi) a = mid + 1; else b = mid;
    }
    *c0 = start;
    *c1 = a;
}

/* Shrink [c0, c1) of last-layer nodes to the first..last with an id in [lo, hi). */
static inline void narrow_last(const int32_t *order, int64_t *c0, int64_t *c1, int64_t lo,
                               int64_t hi) {
    if (!order) {
        if (*c0 < lo) *c0 = lo;
        if (*c1 > hi) *c1 = hi;
        return;
    }
    int64_t a = *c0, b = *c1;
    while (a < b && (order[a] < lo || order[a] >= hi)) a++;
    while (b > a && (order[b - 1] < lo || order[b - 1] >= hi)) b--;
    *c0 = a;
    *c1 = b;
}

static int predict_one(const qac_model_t *m, qac_scratch_t *s, const int32_t *idx,
                       const float *val, size_t nnz, size_t beam, size_t topk, int64_t lo,
                       int64_t hi, int32_t *out_ids, float *out_scores, size_t *out_n) {
    *out_n = 0;
    if (lo >= hi) return QAC_OK;
    int restricted = lo > 0 || hi < m->n_labels;
    cand_t *cur = s->beam, *heap = s->heap;
    size_t n_cur = 1;
    cur[0] = (cand_t){1.0f, 0, 0};
    for (size_t li = 0; li < m->depth; li++) {
        const layer_t *L = &m->layers[li];
        int last = li + 1 == m->depth;
        size_t cap = last ? topk : beam, n_heap = 0;
        const span_t *sp = L->span;
        for (size_t b = 0; b < n_cur; b++) {
            int64_t p = cur[b].node;
            float ps = cur[b].score;
            /* Beam is sorted best first: once a parent cannot beat the worst
             * kept candidate, no later one can either (t <= 1). */
            if (n_heap == cap && ps < heap[0].score) break;
            int64_t c0 = L->child_ptr[p], c1 = L->child_ptr[p + 1];
            if (restricted) {
                if (last) narrow_last(m->label_order, &c0, &c1, lo, hi);
                else narrow_inner(sp, &c0, &c1, lo, hi);
            }
            if (c0 >= c1) continue;
            int64_t w = c1 - c0;
            memcpy(s->buf, L->bias + c0, (size_t)w * sizeof *s->buf);
            score_chunk(L, p, idx, val, nnz, s->buf, c0 - L->child_ptr[p], w);
            for (int64_t j = 0; j < w; j++) {
                int64_t c = c0 + j;
                int32_t key = (int32_t)c;
                if (!last) {
                    /* no label below, or none in [lo, hi) (unrestricted: the same
                     * as "no label below", since every id is in [0, n_labels)) */
                    if (sp[c].min >= hi || sp[c].max < lo) continue;
                } else {
                    if (m->label_order) key = m->label_order[c];
                    if (restricted && (key < lo || key >= hi)) continue;
                }
                cand_t x;
                x.score = ps * post_fn(m->post, s->buf[j], L->power);
                x.node = (int32_t)c;
                x.key = key;
                heap_push(heap, &n_heap, cap, x);
            }
        }
        heap_sort_best_first(heap, n_heap);
        if (last) {
            for (size_t i = 0; i < n_heap; i++) {
                out_ids[i] = heap[i].key;
                out_scores[i] = heap[i].score;
            }
            *out_n = n_heap;
            return QAC_OK;
        }
        memcpy(cur, heap, n_heap * sizeof *cur);
        n_cur = n_heap;
        if (n_cur == 0) return QAC_OK;
    }
    return QAC_OK;
}

static int check_query(const qac_model_t *m, const int32_t *idx, const float *val, size_t nnz) {
    if (nnz && (!idx || !val)) return QAC_E_INPUT;
    for (size_t j = 0; j < nnz; j++) {
        if (idx[j] < 0 || idx[j] >= m->n_features || !isfinite(val[j])) return QAC_E_INPUT;
        if (j && idx[j] <= idx[j - 1]) return QAC_E_INPUT;
    }
    return QAC_OK;
}

static int check_sizes(const qac_model_t *m, const qac_scratch_t *s, size_t beam, size_t topk) {
    if (beam == 0 || topk == 0) return QAC_E_INPUT;
    if (beam > s->max_beam || topk > s->max_topk || m->max_branch > s->max_branch)
        return QAC_E_CAPACITY;
    return QAC_OK;
}

int qac_model_predict(const qac_model_t *model, qac_scratch_t *scratch, const int32_t *idx,
                      const float *val, size_t nnz, size_t beam, size_t topk, int64_t lo,
                      int64_t hi, int32_t *out_ids, float *out_scores, size_t out_cap,
                      size_t *out_n) {
    if (!model || !scratch || !out_ids || !out_scores || !out_n) return QAC_E_INPUT;
    *out_n = 0;
    int rc;
    if ((rc = check_sizes(model, scratch, beam, topk))) return rc;
    if (topk > out_cap) return QAC_E_CAPACITY;
    if (lo < 0 || hi < lo || hi > model->n_labels) return QAC_E_INPUT;
    if ((rc = check_query(model, idx, val, nnz))) return rc;
    return predict_one(model, scratch, idx, val, nnz, beam, topk, lo, hi, out_ids, out_scores,
                       out_n);
}

/* ---- batch --------------------------------------------------------------- */

typedef struct {
    const qac_model_t *model;
    const int64_t *indptr;
    const int32_t *idx;
    const float *val;
    size_t n_rows, beam, topk;
    int32_t *out_ids;
    float *out_scores;
    atomic_size_t next;
} batch_t;

typedef struct {
    batch_t *job;
    int rc;      /* status of this worker's first failing row */
    size_t row;  /* that row */
} worker_t;

enum { BATCH_GRAIN = 16 };

static void *batch_worker(void *arg) {
    worker_t *w = arg;
    batch_t *job = w->job;
    const qac_model_t *m = job->model;
    w->rc = QAC_OK;
    w->row = job->n_rows;
    qac_scratch_t *s = NULL;
    int rc = qac_scratch_new(m, job->beam, job->topk, &s);
    if (rc) {
        w->rc = rc;
        w->row = 0;
        return NULL;
    }
    for (;;) {
        size_t start = atomic_fetch_add(&job->next, BATCH_GRAIN);
        if (start >= job->n_rows) break;
        size_t end = start + BATCH_GRAIN < job->n_rows ? start + BATCH_GRAIN : job->n_rows;
        for (size_t i = start; i < end; i++) {
            int32_t *ids = job->out_ids + i * job->topk;
            float *sc = job->out_scores + i * job->topk;
            const int32_t *qi = job->idx + job->indptr[i];
            const float *qv = job->val + job->indptr[i];
            size_t nnz = (size_t)(job->indptr[i + 1] - job->indptr[i]), n = 0;
            rc = check_query(m, qi, qv, nnz);
            if (!rc)
                rc = predict_one(m, s, qi, qv, nnz, job->beam, job->topk, 0, m->n_labels, ids,
                                 sc, &n);
            for (size_t k = n; k < job->topk; k++) { ids[k] = -1; sc[k] = 0.0f; }
            if (rc && i < w->row) { w->rc = rc; w->row = i; }
        }
    }
    qac_scratch_free(s);
    return NULL;
}

int qac_model_predict_batch(const qac_model_t *model, const int64_t *indptr,
                            const int32_t *idx, const float *val, size_t nnz, size_t n_rows,
                            size_t beam, size_t topk, int n_threads, int32_t *out_ids,
                            float *out_scores, size_t out_cap) {
    if (!model || !indptr || beam == 0 || topk == 0) return QAC_E_INPUT;
    if (n_rows && (!out_ids || !out_scores)) return QAC_E_INPUT;
    if (nnz && (!idx || !val)) return QAC_E_INPUT;
    if (n_rows > SIZE_MAX / topk) return QAC_E_INPUT;
    if (n_rows * topk > out_cap) return QAC_E_CAPACITY;
    if (indptr[0] < 0) return QAC_E_INPUT;
    for (size_t i = 0; i < n_rows; i++)
        if (indptr[i + 1] < indptr[i]) return QAC_E_INPUT;
    if ((uint64_t)indptr[n_rows] > nnz) return QAC_E_INPUT;
    if (n_rows == 0) return QAC_OK;
    if (n_threads <= 0) n_threads = 2;
    size_t nt = (size_t)n_threads;
    size_t max_nt = (n_rows + BATCH_GRAIN - 1) / BATCH_GRAIN;
    if (nt > max_nt) nt = max_nt;

    batch_t job = {.model = model, .indptr = indptr, .idx = idx, .val = val,
                   .n_rows = n_rows, .beam = beam, .topk = topk,
                   .out_ids = out_ids, .out_scores = out_scores};
    atomic_init(&job.next, 0);
    worker_t *ws = calloc(nt, sizeof *ws);
    pthread_t *th = calloc(nt, sizeof *th);
    if (!ws || !th) { free(ws); free(th); return QAC_E_NOMEM; }
    size_t started = 0;
    int rc = QAC_OK;
    for (size_t t = 0; t < nt; t++) ws[t].job = &job;
    /* Worker 0 runs on the calling thread. */
    for (size_t t = 1; t < nt; t++) {
        if (pthread_create(&th[t], NULL, batch_worker, &ws[t])) { rc = QAC_E_THREAD; break; }
        started = t;
    }
    batch_worker(&ws[0]);
    for (size_t t = 1; t <= started; t++) pthread_join(th[t], NULL);
    if (!rc) {
        size_t best = n_rows + 1; /* a scratch failure reports row 0 */
        for (size_t t = 0; t <= started; t++)
            if (ws[t].rc && ws[t].row < best) {
                best = ws[t].row;
                rc = ws[t].rc;
            }
    }
    free(ws);
    free(th);
    return rc;
}

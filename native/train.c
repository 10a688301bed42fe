/* XR-Linear layer training: one binary ranker per node, liblinear's dual CD solvers,
 * solved on a compact local feature space per parent (never O(d) per node).
 *
 * Three parallel phases over an atomic work counter, so results do not depend on
 * the thread count (each node's solve is a pure function of its parent's data and
 * its own seeded RNG):
 *   1. per parent: gather routed instances, remap their features to local ids
 *      (sorted by global id, so export rows come out sorted), per-child positives;
 *   2. per node: solve, prune, keep (local feature, weight) pairs and the bias;
 *   3. per parent: merge its children's pairs into a chunk (rows by feature,
 *      entries by node), then drop the parent's local problem.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "qac.h"

typedef struct {
    int32_t j;         /* local feature id */
    float v;
} jv_t;

typedef struct {
    /* local problem (phase 1) */
    size_t m;          /* routed instances */
    size_t nf;         /* touched features; local id j <-> global feat[j] */
    int32_t *feat;     /* [nf] */
    int64_t *xp;       /* [m+1] */
    jv_t *x;           /* [nnz] rows of the routed instances, local feature ids */
    double *xsq;       /* [m] ||x||^2 + bias^2 */
    int64_t *pp;       /* [k+1] positives of local child c: pi[pp[c]:pp[c+1]] */
    int32_t *pi;       /* local instance ids */
    float *pw;         /* NULL, or [pp[k]]: each positive's cost multiplier (see pos_cost) */
    /* chunk (phase 3) */
    size_t n_rows, n_ent;
    int32_t *row_feat; /* [n_rows] */
    int64_t *row_cnt;  /* [n_rows] entries per row */
    int32_t *ent_node; /* [n_ent] local: the child's index within the parent */
    float *ent_val;    /* [n_ent] */
} parent_t;

typedef struct {
    size_t n;          /* kept weights */
    int32_t *j;        /* local feature ids, increasing */
    float *v;
} node_w_t;

struct qac_layer {
    size_t n_parents, n_nodes, n_rows, n_ent, max_fanout;
    parent_t *par;
    float *bias;
};

typedef struct {
    const qac_train_params_t *prm;
    size_t n, d;
    const int64_t *x_ptr;
    const int32_t *x_idx;
    const float *x_val;
    size_t n_parents, n_nodes;
    const int64_t *child_ptr;
    const int64_t *pos_ptr;
    const int32_t *pos_node;
    const float *pos_cost;
    const int64_t *route_ptr;
    const int32_t *route_inst;
    size_t *node_parent; /* [n_nodes] */
    parent_t *par;
    node_w_t *nw;
    float *bias;
    atomic_size_t next[3];
    atomic_int err;
} job_t;

/* Per-thread scratch, grown on demand and reused across parents and nodes. */
typedef struct {
    int32_t *fmap;  /* [d] global -> local feature id, -1 when untouched */
    uint64_t *fkey; size_t fkey_cap;
    int64_t *cnt; size_t cnt_cap;
    double *w; size_t w_cap;
    struct inst *st; size_t st_cap;
    int32_t *index; size_t index_cap;
} scratch_t;

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q) return QAC_E_NOMEM;
    *p = q;
    *cap = c;
    return 0;
}
#define GROW(s, f, need) grow((void **)&(s)->f, &(s)->f##_cap, (need), sizeof(*(s)->f))

static void scratch_free(scratch_t *s) {
    free(s->fmap); free(s->fkey); free(s->cnt); free(s->w); 
    free(s->st); free(s->index);
}

/* splitmix64: a tiny seeded RNG per node. */
static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
/* uniform in [0, k) by multiply-shift (Lemire), no division on the hot path */
static inline size_t rng_below(uint64_t *s, size_t k) {
    return (size_t)(((unsigned __int128)rng_next(s) * (uint64_t)k) >> 64);
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static void parent_free_local(parent_t *P) {
    free(P->feat); free(P->xp); free(P->x); free(P->xsq); free(P->pw);
    free(P->pp); free(P->pi);
    P->feat = NULL; P->xp = NULL; P->x = NULL; P->xsq = NULL; P->pw = NULL;
    P->pp = NULL; P->pi = NULL;
}

/* ---- phase 1: the local problem of parent p ---- */
static int build_parent(job_t *J, scratch_t *S, size_t p) {
    parent_t *P = &J->par[p];
    int64_t r0 = J->route_ptr[p], r1 = J->route_ptr[p + 1];
    int64_t c0 = J->child_ptr[p], c1 = J->child_ptr[p + 1];
    size_t m = (size_t)(r1 - r0), k = (size_t)(c1 - c0);
    if (k == 0) return 0;
    P->m = m;
    size_t nnz = 0, nf = 0;
    int rc = 0;
    for (int64_t r = r0; r < r1; r++) {
        int32_t i = J->route_inst[r];
        for (int64_t e = J->x_ptr[i]; e < J->x_ptr[i + 1]; e++) {
            int32_t f = J->x_idx[e];
            int32_t j = S->fmap[f];
            if (j < 0) {
                if (GROW(S, fkey, nf + 1) || GROW(S, cnt, nf + 1)) { rc = QAC_E_NOMEM; goto out; }
                j = (int32_t)nf;
                S->fmap[f] = j;
                S->fkey[nf] = (uint64_t)(uint32_t)f;
                S->cnt[nf] = 0;
                nf++;
            }
            S->cnt[j]++;
        }
        nnz += (size_t)(J->x_ptr[i + 1] - J->x_ptr[i]);
    }
    /* Local ids by descending frequency (ties: feature id), so the weights the solver
     * touches most sit together in cache; export re-sorts rows by feature id. */
    for (size_t j = 0; j < nf; j++) {
        uint64_t c = S->cnt[j] < 0xFFFFFFFF ? (uint64_t)S->cnt[j] : 0xFFFFFFFFull;
        S->fkey[j] = ((0xFFFFFFFFull - c) << 32) | (S->fkey[j] & 0xFFFFFFFFull);
    }
    if (nf > 1) qsort(S->fkey, nf, sizeof(uint64_t), cmp_u64);
    for (size_t j = 0; j < nf; j++) S->fmap[(int32_t)(S->fkey[j] & 0xFFFFFFFFull)] = (int32_t)j;
    P->nf = nf;
    P->feat = malloc((nf ? nf : 1) * sizeof(int32_t));
    P->xp = malloc((m + 1) * sizeof(int64_t));
    P->x = malloc((nnz ? nnz : 1) * sizeof(jv_t));
    P->xsq = malloc((m ? m : 1) * sizeof(double));
    P->pp = calloc(k + 1, sizeof(int64_t));
    if (!P->feat || !P->xp || !P->x || !P->xsq || !P->pp) { rc = QAC_E_NOMEM; goto out; }
    for (size_t j = 0; j < nf; j++) P->feat[j] = (int32_t)(S->fkey[j] & 0xFFFFFFFFull);
    double b2 = J->prm->bias * J->prm->bias;
    size_t t = 0;
    P->xp[0] = 0;
    for (size_t li = 0; li < m; li++) {
        int32_t i = J->route_inst[r0 + (int64_t)li];
        double sq = b2;
        for (int64_t e = J->x_ptr[i]; e < J->x_ptr[i + 1]; e++) {
            float v = J->x_val[e];
            P->x[t].j = S->fmap[J->x_idx[e]];
            P->x[t].v = v;
            sq += (double)v * v;
            t++;
        }
        P->xp[li + 1] = (int64_t)t;
        P->xsq[li] = sq;
        for (int64_t e = J->pos_ptr[i]; e < J->pos_ptr[i + 1]; e++) {
            int32_t c = J->pos_node[e];
            if (c >= c0 && c < c1) P->pp[c - c0 + 1]++;
        }
    }
    for (size_t c = 0; c < k; c++) P->pp[c + 1] += P->pp[c];
    P->pi = malloc((P->pp[k] ? (size_t)P->pp[k] : 1) * sizeof(int32_t));
    if (J->pos_cost) P->pw = malloc((P->pp[k] ? (size_t)P->pp[k] : 1) * sizeof(float));
    if (!P->pi || (J->pos_cost && !P->pw) || GROW(S, cnt, k)) { rc = QAC_E_NOMEM; goto out; }
    for (size_t c = 0; c < k; c++) S->cnt[c] = P->pp[c];
    for (size_t li = 0; li < m; li++) {
        int32_t i = J->route_inst[r0 + (int64_t)li];
        for (int64_t e = J->pos_ptr[i]; e < J->pos_ptr[i + 1]; e++) {
            int32_t c = J->pos_node[e];
            /* a duplicate positive is listed twice: y is set twice, its cost is the
             * larger of the two */
            if (c >= c0 && c < c1) {
                int64_t at = S->cnt[c - c0]++;
                P->pi[at] = (int32_t)li;
                if (P->pw) P->pw[at] = J->pos_cost[e];
            }
        }
    }
out:
    for (size_t j = 0; j < nf; j++) S->fmap[(int32_t)(S->fkey[j] & 0xFFFFFFFFull)] = -1;
    return rc;
}

/* ---- phase 2: solvers (liblinear's, on the parent's local feature space) ---- */
/* Per-instance solver state in one cache line's worth, visited in random order. */
struct inst {
    double a0, a1;  /* l2svm: alpha, Q_ii; logreg: alpha, C - alpha */
    double xsq;     /* ||x||^2 incl. the bias feature */
    double C;       /* cost: Cn, or Cp times the positive's multiplier (l2svm: then 0.5/C) */
    int64_t start;  /* row in parent_t.x */
    int32_t len;
    int32_t y;      /* +1 / -1 */
};

static inline double dot_row(const jv_t *x, const struct inst *s, const double *w, double wb) {
    const jv_t *r = x + s->start;
    double acc = wb;
    for (int32_t e = 0; e < s->len; e++) acc += w[r[e].j] * (double)r[e].v;
    return acc;
}

static inline void axpy_row(const jv_t *x, const struct inst *s, double *w, double a) {
    const jv_t *r = x + s->start;
    for (int32_t e = 0; e < s->len; e++) w[r[e].j] += a * (double)r[e].v;
}

/* Instances are visited in random order, so each visit would wait on memory: fetch the
 * state 4 visits ahead, the row 2 ahead, and the row's weights 1 ahead (about 12% of
 * training time on the AOL benchmark; arithmetic unchanged). */
static inline void prefetch_ahead(const jv_t *x, const struct inst *st, const int32_t *index,
                                  size_t s, size_t n, const double *w) {
    if (s + 4 < n) __builtin_prefetch(&st[index[s + 4]]);
    if (s + 2 < n) __builtin_prefetch(x + st[index[s + 2]].start);
    if (s + 1 < n) {
        const struct inst *sn = &st[index[s + 1]];
        const jv_t *rn = x + sn->start;
        for (int32_t e = 0; e < sn->len; e++) __builtin_prefetch(w + rn[e].j, 1);
    }
}

/* liblinear solve_l2r_l1l2_svc, L2 loss: diag = 0.5/C, no upper bound, with shrinking. */
static void solve_l2svm(const parent_t *P, const qac_train_params_t *prm, scratch_t *S,
                        uint64_t *rng) {
    size_t l = P->m, nf = P->nf;
    const jv_t *x = P->x;
    double *w = S->w;
    struct inst *st = S->st;
    int32_t *index = S->index;
    double bias = prm->bias;
    for (size_t i = 0; i < l; i++) {
        st[i].C = 0.5 / st[i].C;  /* from here on: the diagonal term 0.5/C */
        st[i].a0 = 0;
        st[i].a1 = st[i].C + st[i].xsq;
        index[i] = (int32_t)i;
    }
    double pgmax_old = INFINITY, pgmin_old = -INFINITY;
    size_t active = l;
    int iter = 0;
    while (iter < prm->max_iter) {
        double pgmax_new = -INFINITY, pgmin_new = INFINITY;
        for (size_t i = 0; i < active; i++) {
            size_t j = i + rng_below(rng, active - i);
            int32_t t = index[i]; index[i] = index[j]; index[j] = t;
        }
        for (size_t s = 0; s < active; s++) {
            struct inst *si = &st[index[s]];
            prefetch_ahead(x, st, index, s, active, w);
            double yi = si->y;
            double g = yi * dot_row(x, si, w, w[nf] * bias) - 1 + si->a0 * si->C;
            double pg = 0;
            if (si->a0 == 0) {
                if (g > pgmax_old) {
                    active--;
                    int32_t t = index[s]; index[s] = index[active]; index[active] = t;
                    s--;  /* unsigned wrap then ++ is well defined */
                    continue;
                } else if (g < 0) {
                    pg = g;
                }
            } else {
                pg = g;
            }
            if (pg > pgmax_new) pgmax_new = pg;
            if (pg < pgmin_new) pgmin_new = pg;
            if (fabs(pg) > 1.0e-12) {
                double old = si->a0;
                double a = old - g / si->a1;
                si->a0 = a > 0 ? a : 0;
                double d = (si->a0 - old) * yi;
                axpy_row(x, si, w, d);
                w[nf] += d * bias;
            }
        }
        iter++;
        if (pgmax_new - pgmin_new <= prm->eps) {
            if (active == l) break;
            active = l;
            pgmax_old = INFINITY;
            pgmin_old = -INFINITY;
            continue;
        }
        pgmax_old = pgmax_new;
        pgmin_old = pgmin_new;
        if (pgmax_old <= 0) pgmax_old = INFINITY;
        if (pgmin_old >= 0) pgmin_old = -INFINITY;
    }
}

/* liblinear solve_l2r_lr_dual: alpha_i + (C_i - alpha_i) = C_i, inner Newton steps. */
static void solve_logreg(const parent_t *P, const qac_train_params_t *prm, scratch_t *S,
                         uint64_t *rng) {
    size_t l = P->m, nf = P->nf;
    const jv_t *x = P->x;
    double *w = S->w;
    struct inst *st = S->st;
    int32_t *index = S->index;
    double bias = prm->bias;
    const int max_inner = 100;
    double innereps = 1e-2;
    double innereps_min = prm->eps < 1e-8 ? prm->eps : 1e-8;
    for (size_t i = 0; i < l; i++) {
        double C = st[i].C;
        st[i].a0 = 0.001 * C < 1e-8 ? 0.001 * C : 1e-8;
        st[i].a1 = C - st[i].a0;
        double d = st[i].y * st[i].a0;
        axpy_row(x, &st[i], w, d);
        w[nf] += d * bias;
        index[i] = (int32_t)i;
    }
    int iter = 0;
    while (iter < prm->max_iter) {
        for (size_t i = 0; i < l; i++) {
            size_t j = i + rng_below(rng, l - i);
            int32_t t = index[i]; index[i] = index[j]; index[j] = t;
        }
        size_t newton_iter = 0;
        double gmax = 0;
        for (size_t s = 0; s < l; s++) {
            struct inst *si = &st[index[s]];
            prefetch_ahead(x, st, index, s, l, w);
            double yi = si->y, C = si->C;
            double a = si->xsq, b = yi * dot_row(x, si, w, w[nf] * bias);
            double *p1 = &si->a0, *p2 = &si->a1;
            double sign = 1;
            if (0.5 * a * (*p2 - *p1) + b < 0) {
                p1 = &si->a1;
                p2 = &si->a0;
                sign = -1;
            }
            double old = *p1, z = old;
            if (C - z < 0.5 * C) z = 0.1 * z;
            double gp = a * (z - old) + sign * b + log(z / (C - z));
            if (fabs(gp) > gmax) gmax = fabs(gp);
            int inner = 0;
            while (inner <= max_inner) {
                if (fabs(gp) < innereps) break;
                double gpp = a + C / (C - z) / z;
                double tz = z - gp / gpp;
                z = tz <= 0 ? z * 0.1 : tz;
                gp = a * (z - old) + sign * b + log(z / (C - z));
                newton_iter++;
                inner++;
            }
            if (inner > 0) {
                *p1 = z;
                *p2 = C - z;
                double d = sign * (z - old) * yi;
                axpy_row(x, si, w, d);
                w[nf] += d * bias;
            }
        }
        iter++;
        if (gmax < prm->eps) break;
        if (newton_iter <= l / 10)
            innereps = 0.1 * innereps > innereps_min ? 0.1 * innereps : innereps_min;
    }
}

static int solve_node(job_t *J, scratch_t *S, size_t c) {
    size_t p = J->node_parent[c];
    const parent_t *P = &J->par[p];
    const qac_train_params_t *prm = J->prm;
    size_t m = P->m, nf = P->nf, lc = c - (size_t)J->child_ptr[p];
    if (GROW(S, w, nf + 1) || GROW(S, st, m + 1) || GROW(S, index, m + 1))
        return QAC_E_NOMEM;
    memset(S->w, 0, (nf + 1) * sizeof(double));
    for (size_t i = 0; i < m; i++) {
        S->st[i].start = P->xp[i];
        S->st[i].len = (int32_t)(P->xp[i + 1] - P->xp[i]);
        S->st[i].xsq = P->xsq[i];
        S->st[i].y = -1;
        S->st[i].C = prm->Cn;
    }
    for (int64_t e = P->pp[lc]; e < P->pp[lc + 1]; e++) {
        struct inst *si = &S->st[P->pi[e]];
        double C = prm->Cp * (P->pw ? (double)P->pw[e] : 1.0);
        si->C = si->y == 1 && si->C > C ? si->C : C;
        si->y = 1;
    }
    uint64_t rng = prm->seed ^ (0xD1B54A32D192ED03ull * ((uint64_t)c + 1));
    (void)rng_next(&rng);
    if (m > 0) {
        if (prm->solver == QAC_SOLVER_L2SVM) solve_l2svm(P, prm, S, &rng);
        else solve_logreg(P, prm, S, &rng);
    }
    J->bias[c] = (float)(S->w[nf] * prm->bias);
    size_t kept = 0;
    for (size_t j = 0; j < nf; j++) {
        double v = S->w[j];
        if (v != 0 && fabs(v) >= prm->threshold) kept++;
    }
    node_w_t *N = &J->nw[c];
    N->n = kept;
    N->j = malloc((kept ? kept : 1) * sizeof(int32_t));
    N->v = malloc((kept ? kept : 1) * sizeof(float));
    if (!N->j || !N->v) return QAC_E_NOMEM;
    size_t t = 0;
    for (size_t j = 0; j < nf; j++) {
        double v = S->w[j];
        if (v != 0 && fabs(v) >= prm->threshold) {
            N->j[t] = (int32_t)j;
            N->v[t] = (float)v;
            t++;
        }
    }
    return 0;
}

/* ---- phase 3: merge a parent's children into its chunk ---- */
static int assemble_parent(job_t *J, scratch_t *S, size_t p) {
    parent_t *P = &J->par[p];
    size_t c0 = (size_t)J->child_ptr[p], c1 = (size_t)J->child_ptr[p + 1], nf = P->nf;
    int rc = 0;
    if (c1 == c0) return 0;
    if (GROW(S, cnt, nf + 1)) { rc = QAC_E_NOMEM; goto out; }
    memset(S->cnt, 0, (nf + 1) * sizeof(int64_t));
    size_t n_ent = 0;
    for (size_t c = c0; c < c1; c++) {
        for (size_t t = 0; t < J->nw[c].n; t++) S->cnt[J->nw[c].j[t]]++;
        n_ent += J->nw[c].n;
    }
    size_t n_rows = 0;
    if (GROW(S, fkey, nf + 1)) { rc = QAC_E_NOMEM; goto out; }
    for (size_t j = 0; j < nf; j++)
        if (S->cnt[j] > 0) S->fkey[n_rows++] = ((uint64_t)(uint32_t)P->feat[j] << 32) | j;
    if (n_rows > 1) qsort(S->fkey, n_rows, sizeof(uint64_t), cmp_u64);
    P->row_feat = malloc((n_rows ? n_rows : 1) * sizeof(int32_t));
    P->row_cnt = malloc((n_rows ? n_rows : 1) * sizeof(int64_t));
    P->ent_node = malloc((n_ent ? n_ent : 1) * sizeof(int32_t));
    P->ent_val = malloc((n_ent ? n_ent : 1) * sizeof(float));
    if (!P->row_feat || !P->row_cnt || !P->ent_node || !P->ent_val) { rc = QAC_E_NOMEM; goto out; }
    /* rows by feature id; cnt[j] becomes the write position of local feature j's entries */
    int64_t off = 0;
    for (size_t r = 0; r < n_rows; r++) {
        size_t j = (size_t)(S->fkey[r] & 0xFFFFFFFFull);
        int64_t k = S->cnt[j];
        P->row_feat[r] = P->feat[j];
        P->row_cnt[r] = k;
        S->cnt[j] = off;
        off += k;
    }
    for (size_t c = c0; c < c1; c++) {
        for (size_t t = 0; t < J->nw[c].n; t++) {
            int64_t at = S->cnt[J->nw[c].j[t]]++;
            P->ent_node[at] = (int32_t)(c - c0); /* the child's index within p */
            P->ent_val[at] = J->nw[c].v[t];
        }
    }
    P->n_rows = n_rows;
    P->n_ent = n_ent;
out:
    for (size_t c = c0; c < c1; c++) {
        free(J->nw[c].j); free(J->nw[c].v);
        J->nw[c].j = NULL; J->nw[c].v = NULL;
    }
    parent_free_local(P);
    return rc;
}

/* ---- threads ---- */
typedef struct {
    job_t *J;
    scratch_t *S;
    int phase;
    const size_t *order;  /* phase 0/2: parents; phase 1: nodes */
    size_t count;
} worker_t;

static void *worker(void *arg) {
    worker_t *W = arg;
    job_t *J = W->J;
    for (;;) {
        if (atomic_load(&J->err)) break;
        size_t u = atomic_fetch_add(&J->next[W->phase], 1);
        if (u >= W->count) break;
        size_t x = W->order[u];
        int rc;
        if (W->phase == 0) rc = build_parent(J, W->S, x);
        else if (W->phase == 1) rc = solve_node(J, W->S, x);
        else rc = assemble_parent(J, W->S, x);
        if (!rc && J->prm->progress) __atomic_fetch_add(J->prm->progress, 1, __ATOMIC_RELAXED);
        if (rc) {
            int zero = 0;
            atomic_compare_exchange_strong(&J->err, &zero, rc);
            break;
        }
    }
    return NULL;
}

static int run_phase(job_t *J, scratch_t *S, int n_threads, int phase, const size_t *order,
                     size_t count) {
    worker_t W[64];
    pthread_t tid[64];
    int started = 0;
    atomic_store(&J->next[phase], 0);
    for (int t = 0; t < n_threads; t++) {
        W[t].J = J; W[t].S = &S[t]; W[t].phase = phase; W[t].order = order; W[t].count = count;
    }
    for (int t = 1; t < n_threads; t++) {
        if (pthread_create(&tid[t], NULL, worker, &W[t]) != 0) break;
        started = t;
    }
    worker(&W[0]);
    for (int t = 1; t <= started; t++) pthread_join(tid[t], NULL);
    return atomic_load(&J->err);
}

/* ---- boundary checks ---- */
static int check_csr(const int64_t *ptr, size_t rows, size_t nnz) {
    if (ptr[0] != 0) return QAC_E_RANGE;
    for (size_t r = 0; r < rows; r++)
        if (ptr[r + 1] < ptr[r]) return QAC_E_RANGE;
    return (uint64_t)ptr[rows] == (uint64_t)nnz ? 0 : QAC_E_RANGE;
}

static int check_ids(const int32_t *ids, size_t nnz, size_t bound) {
    for (size_t e = 0; e < nnz; e++)
        if (ids[e] < 0 || (size_t)ids[e] >= bound) return QAC_E_RANGE;
    return 0;
}

static int check_params(const qac_train_params_t *p) {
    if (p->solver != QAC_SOLVER_L2SVM && p->solver != QAC_SOLVER_LOGREG) return QAC_E_INPUT;
    if (!(p->Cp > 0 && isfinite(p->Cp)) || !(p->Cn > 0 && isfinite(p->Cn))) return QAC_E_INPUT;
    if (!(p->eps > 0 && isfinite(p->eps)) || p->max_iter < 1) return QAC_E_INPUT;
    if (!(p->bias >= 0 && isfinite(p->bias))) return QAC_E_INPUT;
    if (!(p->threshold >= 0 && isfinite(p->threshold))) return QAC_E_INPUT;
    return 0;
}

typedef struct { size_t id, m; } order_t;
static int cmp_order(const void *a, const void *b) {
    const order_t *x = a, *y = b;
    if (x->m != y->m) return x->m < y->m ? 1 : -1;  /* big parents first: load balance */
    return (x->id > y->id) - (x->id < y->id);
}

void qac_layer_free(qac_layer_t *h) {
    if (!h) return;
    if (h->par) {
        for (size_t p = 0; p < h->n_parents; p++) {
            parent_t *P = &h->par[p];
            parent_free_local(P);
            free(P->row_feat); free(P->row_cnt); free(P->ent_node); free(P->ent_val);
        }
    }
    free(h->par);
    free(h->bias);
    free(h);
}

int qac_train_layer(const qac_train_params_t *params,
                    size_t n, size_t d, const int64_t *x_ptr, const int32_t *x_idx,
                    const float *x_val, size_t x_nnz,
                    size_t n_parents, const int64_t *child_ptr, size_t n_nodes,
                    const int64_t *pos_ptr, const int32_t *pos_node, const float *pos_cost,
                    size_t pos_nnz,
                    const int64_t *route_ptr, const int32_t *route_inst, size_t route_nnz,
                    int n_threads, qac_layer_t **out) {
    if (!out) return QAC_E_INPUT;
    *out = NULL;
    if (!params || !x_ptr || !child_ptr || !pos_ptr || !route_ptr) return QAC_E_INPUT;
    if ((x_nnz && (!x_idx || !x_val)) || (pos_nnz && !pos_node) || (route_nnz && !route_inst))
        return QAC_E_INPUT;
    if (n > INT32_MAX || d > INT32_MAX || n_nodes > INT32_MAX || n_parents > INT32_MAX)
        return QAC_E_INPUT;
    int rc = check_params(params);
    if (rc) return rc;
    if ((rc = check_csr(x_ptr, n, x_nnz)) || (rc = check_ids(x_idx, x_nnz, d))) return rc;
    for (size_t e = 0; e < x_nnz; e++)
        if (!isfinite(x_val[e])) return QAC_E_INPUT;
    for (size_t i = 0; i < n; i++)
        if (x_ptr[i + 1] - x_ptr[i] > INT32_MAX) return QAC_E_INPUT;
    if ((rc = check_csr(child_ptr, n_parents, n_nodes))) return rc;
    if ((rc = check_csr(pos_ptr, n, pos_nnz)) || (rc = check_ids(pos_node, pos_nnz, n_nodes)))
        return rc;
    if (pos_cost)
        for (size_t e = 0; e < pos_nnz; e++)
            if (!(pos_cost[e] > 0) || !isfinite(pos_cost[e])) return QAC_E_INPUT;
    if ((rc = check_csr(route_ptr, n_parents, route_nnz)) ||
        (rc = check_ids(route_inst, route_nnz, n)))
        return rc;
    for (size_t p = 0; p < n_parents; p++)
        for (int64_t r = route_ptr[p] + 1; r < route_ptr[p + 1]; r++)
            if (route_inst[r] <= route_inst[r - 1]) return QAC_E_INPUT;
    if (n_threads <= 0) n_threads = 2;
    if (n_threads > 64) n_threads = 64;

    qac_layer_t *h = calloc(1, sizeof(*h));
    job_t *J = calloc(1, sizeof(*J));
    scratch_t *S = calloc((size_t)n_threads, sizeof(scratch_t));
    order_t *ord = malloc((n_parents ? n_parents : 1) * sizeof(order_t));
    size_t *porder = malloc((n_parents ? n_parents : 1) * sizeof(size_t));
    size_t *norder = malloc((n_nodes ? n_nodes : 1) * sizeof(size_t));
    rc = QAC_E_NOMEM;
    if (!h || !J || !S || !ord || !porder || !norder) goto fail;
    h->n_parents = n_parents;
    h->n_nodes = n_nodes;
    h->par = calloc(n_parents ? n_parents : 1, sizeof(parent_t));
    h->bias = calloc(n_nodes ? n_nodes : 1, sizeof(float));
    J->nw = calloc(n_nodes ? n_nodes : 1, sizeof(node_w_t));
    J->node_parent = malloc((n_nodes ? n_nodes : 1) * sizeof(size_t));
    if (!h->par || !h->bias || !J->nw || !J->node_parent) goto fail;
    for (int t = 0; t < n_threads; t++) {
        S[t].fmap = malloc((d ? d : 1) * sizeof(int32_t));
        if (!S[t].fmap) goto fail;
        memset(S[t].fmap, 0xff, (d ? d : 1) * sizeof(int32_t));  /* all -1 */
    }
    J->prm = params; J->n = n; J->d = d;
    J->x_ptr = x_ptr; J->x_idx = x_idx; J->x_val = x_val;
    J->n_parents = n_parents; J->n_nodes = n_nodes; J->child_ptr = child_ptr;
    J->pos_ptr = pos_ptr; J->pos_node = pos_node; J->pos_cost = pos_cost;
    J->route_ptr = route_ptr; J->route_inst = route_inst;
    J->par = h->par; J->bias = h->bias;
    atomic_init(&J->err, 0);
    for (int ph = 0; ph < 3; ph++) atomic_init(&J->next[ph], 0);

    for (size_t p = 0; p < n_parents; p++) {
        size_t fan = (size_t)(child_ptr[p + 1] - child_ptr[p]);
        if (fan > h->max_fanout) h->max_fanout = fan;
        ord[p].id = p;
        ord[p].m = (size_t)(route_ptr[p + 1] - route_ptr[p]) *
                   (size_t)(child_ptr[p + 1] - child_ptr[p] + 1);
        for (int64_t c = child_ptr[p]; c < child_ptr[p + 1]; c++) J->node_parent[c] = p;
    }
    qsort(ord, n_parents, sizeof(order_t), cmp_order);
    size_t nn = 0;
    for (size_t u = 0; u < n_parents; u++) {
        size_t p = ord[u].id;
        porder[u] = p;
        for (int64_t c = child_ptr[p]; c < child_ptr[p + 1]; c++) norder[nn++] = (size_t)c;
    }
    if ((rc = run_phase(J, S, n_threads, 0, porder, n_parents))) goto fail;
    if ((rc = run_phase(J, S, n_threads, 1, norder, nn))) goto fail;
    if ((rc = run_phase(J, S, n_threads, 2, porder, n_parents))) goto fail;
    for (size_t p = 0; p < n_parents; p++) {
        h->n_rows += h->par[p].n_rows;
        h->n_ent += h->par[p].n_ent;
    }
    rc = 0;
    *out = h;
    h = NULL;
fail:
    if (J && J->nw) {
        for (size_t c = 0; c < n_nodes; c++) { free(J->nw[c].j); free(J->nw[c].v); }
    }
    if (J) { free(J->nw); free(J->node_parent); }
    if (S) for (int t = 0; t < n_threads; t++) scratch_free(&S[t]);
    free(S); free(J); free(ord); free(porder); free(norder);
    qac_layer_free(h);
    return rc;
}

int qac_layer_sizes(const qac_layer_t *h, size_t *n_rows, size_t *n_entries,
                    size_t *max_chunk_entries, size_t *max_fanout) {
    if (!h || !n_rows || !n_entries || !max_chunk_entries || !max_fanout) return QAC_E_INPUT;
    *n_rows = h->n_rows;
    *n_entries = h->n_ent;
    size_t most = 0;
    for (size_t p = 0; p < h->n_parents; p++)
        if (h->par[p].n_ent > most) most = h->par[p].n_ent;
    *max_chunk_entries = most;
    *max_fanout = h->max_fanout;
    return 0;
}

int qac_layer_export(const qac_layer_t *h, int64_t *chunk_ptr, int64_t *chunk_ent,
                     size_t n_chunk, int32_t *row_feat, int32_t *row_end, size_t n_rows,
                     void *ent_child, int32_t child_bytes, float *ent_val, size_t n_ent,
                     float *bias, size_t n_bias) {
    if (!h || !chunk_ptr || !chunk_ent) return QAC_E_INPUT;
    if ((h->n_rows && (!row_feat || !row_end)) || (h->n_ent && (!ent_child || !ent_val)) ||
        (h->n_nodes && !bias))
        return QAC_E_INPUT;
    if (child_bytes != 1 && child_bytes != 2 && child_bytes != 4) return QAC_E_INPUT;
    if (n_chunk < h->n_parents + 1 || n_rows < h->n_rows || n_ent < h->n_ent ||
        n_bias < h->n_nodes)
        return QAC_E_CAPACITY;
    uint64_t id_limit = child_bytes == 4 ? (uint64_t)UINT32_MAX + 1 : 1ull << (8 * child_bytes);
    if ((uint64_t)h->max_fanout > id_limit) return QAC_E_RANGE;
    size_t r = 0, e = 0;
    chunk_ptr[0] = 0;
    chunk_ent[0] = 0;
    for (size_t p = 0; p < h->n_parents; p++) {
        const parent_t *P = &h->par[p];
        if (P->n_ent > (size_t)INT32_MAX) return QAC_E_RANGE; /* int32 row ends */
        int64_t end = 0;
        for (size_t k = 0; k < P->n_rows; k++) {
            end += P->row_cnt[k];
            row_feat[r] = P->row_feat[k];
            row_end[r] = (int32_t)end;
            r++;
        }
        for (size_t k = 0; k < P->n_ent; k++) {
            uint32_t c = (uint32_t)P->ent_node[k]; /* local: the child's index in p */
            if (child_bytes == 1) ((uint8_t *)ent_child)[e + k] = (uint8_t)c;
            else if (child_bytes == 2) ((uint16_t *)ent_child)[e + k] = (uint16_t)c;
            else ((uint32_t *)ent_child)[e + k] = c;
        }
        if (P->n_ent) memcpy(ent_val + e, P->ent_val, P->n_ent * sizeof(float));
        e += P->n_ent;
        chunk_ptr[p + 1] = (int64_t)r;
        chunk_ent[p + 1] = (int64_t)e;
    }
    if (h->n_nodes) memcpy(bias, h->bias, h->n_nodes * sizeof(float));
    return 0;
}

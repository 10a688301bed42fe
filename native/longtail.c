/* The long-tail pool's merge and ranker (see qac_longtail.h). */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "qac.h"

/* feature columns after the QAC_LT_NSRC source flags (qac.longtail.FEATURES) */
enum {
    F_LOGSCORE = QAC_LT_NSRC, F_LOGSCORE_L, F_RANK, F_LOGPOP, F_LOGPOP_L, F_SEEN, F_GEN,
    F_GEN_L, F_OVERLAP, F_EXTENDS, F_WORDS, F_CHARS, F_HREC, F_HREC_L, F_END
};
_Static_assert(F_END == QAC_LT_NF, "feature columns out of step with QAC_LT_NF");

#define MAX_ROWS ((size_t)1 << 24)

struct qac_ranker {
    const char *text;
    int64_t *start; /* n_labels + 1: label i is text[start[i], start[i+1] - 1) */
    size_t n_labels;
    const double *logpop;
    double w[QAC_LT_NF];
};

typedef struct {
    double score;
    int32_t row;
} ranked_t;

typedef struct {
    uint64_t h;
    const char *p;
    size_t n;
} piece_t;

struct qac_pool_scratch {
    size_t cap;   /* rows */
    size_t hmask; /* hash slots - 1 (a power of two >= 2 cap) */
    int32_t *slot;       /* hmask + 1: row + 1, 0 when free */
    uint64_t *row_hash;  /* cap */
    size_t *row_slot;    /* cap: the hash slot each row took */
    const char **row_text;
    size_t *row_len;
    int32_t *row_ref, *row_src;
    double *x;           /* cap * QAC_LT_NF */
    ranked_t *order;     /* cap */
    size_t prev_cap;     /* longest previous query (bytes) */
    piece_t *pieces;     /* prev_cap + 1: the previous query's words, by hash */
    uint32_t *stamp;     /* prev_cap + 1: the row that last matched each word */
    uint32_t tick;
};

int qac_ranker_new(const char *labels, size_t labels_len, size_t n_labels,
                   const double *logpop, size_t n_logpop, const double *weights,
                   size_t n_weights, qac_ranker_t **out) {
    if (!out) return QAC_E_INPUT;
    *out = NULL;
    if ((labels_len && !labels) || (n_labels && !logpop) || !weights ||
        n_weights != QAC_LT_NF || n_logpop != n_labels || n_labels > ((size_t)1 << 31) - 1)
        return QAC_E_INPUT;
    for (size_t f = 0; f < QAC_LT_NF; f++)
        if (!isfinite(weights[f])) return QAC_E_INPUT;
    if (n_labels == 0 && labels_len) return QAC_E_RANGE;
    qac_ranker_t *r = calloc(1, sizeof *r);
    if (!r) return QAC_E_NOMEM;
    r->start = malloc((n_labels + 1) * sizeof *r->start);
    if (!r->start) { free(r); return QAC_E_NOMEM; }
    size_t i = 0;
    if (n_labels) {
        r->start[i++] = 0;
        const char *p = labels, *end = labels + labels_len;
        while ((p = memchr(p, '\n', (size_t)(end - p))) != NULL) {
            if (i == n_labels) { qac_ranker_free(r); return QAC_E_RANGE; }
            r->start[i++] = (int64_t)(++p - labels);
        }
        if (i != n_labels) { qac_ranker_free(r); return QAC_E_RANGE; }
    }
    r->start[n_labels] = (int64_t)labels_len + 1;
    r->text = labels ? labels : "";
    r->n_labels = n_labels;
    r->logpop = logpop;
    for (size_t f = 0; f < n_labels; f++)
        if (!isfinite(logpop[f]) || logpop[f] < 0) { qac_ranker_free(r); return QAC_E_RANGE; }
    memcpy(r->w, weights, sizeof r->w);
    *out = r;
    return QAC_OK;
}

void qac_ranker_free(qac_ranker_t *ranker) {
    if (!ranker) return;
    free(ranker->start);
    free(ranker);
}

void qac_pool_scratch_free(qac_pool_scratch_t *s) {
    if (!s) return;
    free(s->slot);
    free(s->row_hash);
    free(s->row_slot);
    free(s->row_text);
    free(s->row_len);
    free(s->row_ref);
    free(s->row_src);
    free(s->x);
    free(s->order);
    free(s->pieces);
    free(s->stamp);
    free(s);
}

int qac_pool_scratch_new(size_t cap, size_t prev_cap, qac_pool_scratch_t **out) {
    if (!out) return QAC_E_INPUT;
    *out = NULL;
    if (cap == 0 || cap > MAX_ROWS || prev_cap > MAX_ROWS) return QAC_E_INPUT;
    qac_pool_scratch_t *s = calloc(1, sizeof *s);
    if (!s) return QAC_E_NOMEM;
    size_t slots = 16;
    while (slots < 2 * cap) slots *= 2;
    s->cap = cap;
    s->hmask = slots - 1;
    s->slot = calloc(slots, sizeof *s->slot);
    s->row_hash = malloc(cap * sizeof *s->row_hash);
    s->row_slot = malloc(cap * sizeof *s->row_slot);
    s->row_text = malloc(cap * sizeof *s->row_text);
    s->row_len = malloc(cap * sizeof *s->row_len);
    s->row_ref = malloc(cap * sizeof *s->row_ref);
    s->row_src = malloc(cap * sizeof *s->row_src);
    s->x = malloc(cap * QAC_LT_NF * sizeof *s->x);
    s->order = malloc(cap * sizeof *s->order);
    s->prev_cap = prev_cap;
    s->pieces = malloc((prev_cap + 1) * sizeof *s->pieces);
    s->stamp = calloc(prev_cap + 1, sizeof *s->stamp);
    if (!s->pieces || !s->stamp || !s->slot || !s->row_hash || !s->row_slot || !s->row_text || !s->row_len || !s->row_ref ||
        !s->row_src || !s->x || !s->order) {
        qac_pool_scratch_free(s);
        return QAC_E_NOMEM;
    }
    *out = s;
    return QAC_OK;
}

/* ---- text helpers (bytes of UTF-8) ----------------------------------------- */

static uint64_t fnv1a(const char *t, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)t[i]) * 1099511628211ULL;
    return h;
}

static size_t count_spaces(const char *t, size_t n) {
    size_t c = 0;
    for (size_t i = 0; i < n; i++) c += t[i] == ' ';
    return c;
}

/* code points: the bytes that do not continue a sequence (Python's len of the str) */
static size_t count_chars(const char *t, size_t n) {
    size_t c = 0;
    for (size_t i = 0; i < n; i++) c += ((unsigned char)t[i] & 0xC0) != 0x80;
    return c;
}

static int same(const char *a, size_t na, const char *b, size_t nb) {
    return na == nb && (na == 0 || memcmp(a, b, na) == 0);
}

static int by_hash(const void *a, const void *b) {
    const piece_t *x = a, *y = b;
    return (x->h > y->h) - (x->h < y->h);
}

/* Split prev at ' ' into s->pieces, sorted by hash; returns how many. */
static size_t split_prev(qac_pool_scratch_t *s, const char *prev, size_t n) {
    size_t k = 0, i = 0;
    for (;;) {
        const char *sp = memchr(prev + i, ' ', n - i);
        size_t j = sp ? (size_t)(sp - prev) : n;
        s->pieces[k++] = (piece_t){fnv1a(prev + i, j - i), prev + i, j - i};
        if (!sp) break;
        i = j + 1;
    }
    qsort(s->pieces, k, sizeof *s->pieces, by_hash);
    return k;
}

/* The first of the sorted pieces equal to w (the same one for every copy of a
 * word), or -1. */
static ptrdiff_t find_piece(const piece_t *pc, size_t np, const char *w, size_t nw) {
    uint64_t h = fnv1a(w, nw);
    size_t lo = 0, hi = np;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (pc[mid].h < h) lo = mid + 1; else hi = mid;
    }
    for (; lo < np && pc[lo].h == h; lo++)
        if (same(pc[lo].p, pc[lo].n, w, nw)) return (ptrdiff_t)lo;
    return -1;
}

/* Share of the pieces of t (split at ' ') that are words of the previous query,
 * each distinct word counted once: Python's len(set(prev.split(" ")) & set(new))
 * / len(new). O(len(t) + pieces * log(words of prev)). */
static double overlap(qac_pool_scratch_t *s, size_t np, const char *t, size_t nt) {
    if (++s->tick == 0) { /* wrapped: forget every stamp */
        memset(s->stamp, 0, (s->prev_cap + 1) * sizeof *s->stamp);
        s->tick = 1;
    }
    size_t pieces = 0, hits = 0, i = 0;
    for (;;) {
        const char *sp = memchr(t + i, ' ', nt - i);
        size_t j = sp ? (size_t)(sp - t) : nt;
        pieces++;
        ptrdiff_t k = find_piece(s->pieces, np, t + i, j - i);
        if (k >= 0 && s->stamp[k] != s->tick) {
            s->stamp[k] = s->tick;
            hits++;
        }
        if (!sp) break;
        i = j + 1;
    }
    return (double)hits / (double)pieces;
}

/* ---- the pool ------------------------------------------------------------- */

typedef struct {
    qac_pool_scratch_t *s;
    size_t n;
} pool_t;

/* The row of text t, or -1 (hash table of the scratch). */
static int32_t find_row(const pool_t *p, const char *t, size_t n, uint64_t h) {
    const qac_pool_scratch_t *s = p->s;
    for (size_t k = h & s->hmask;; k = (k + 1) & s->hmask) {
        int32_t r = s->slot[k] - 1;
        if (r < 0) return -1;
        if (s->row_hash[r] == h && same(s->row_text[r], s->row_len[r], t, n)) return r;
    }
}

static int32_t add_row(pool_t *p, const char *t, size_t n, uint64_t h, int32_t ref,
                       int32_t src) {
    qac_pool_scratch_t *s = p->s;
    int32_t r = (int32_t)p->n++;
    size_t k = h & s->hmask;
    while (s->slot[k]) k = (k + 1) & s->hmask;
    s->slot[k] = r + 1;
    s->row_slot[r] = k;
    s->row_hash[r] = h;
    s->row_text[r] = t;
    s->row_len[r] = n;
    s->row_ref[r] = ref;
    s->row_src[r] = src;
    memset(s->x + (size_t)r * QAC_LT_NF, 0, QAC_LT_NF * sizeof *s->x);
    return r;
}

/* Free the hash slots the rows took (the table stays empty between calls). */
static void clear_rows(pool_t *p) {
    qac_pool_scratch_t *s = p->s;
    for (size_t r = 0; r < p->n; r++) s->slot[s->row_slot[r]] = 0;
    p->n = 0;
}

static int by_score(const void *a, const void *b) {
    const ranked_t *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    return (x->row > y->row) - (x->row < y->row);
}

static int fill_pool(const qac_ranker_t *rk, pool_t *pool, const char *prefix,
                     size_t prefix_len, const char *prev, size_t prev_len,
                     const int32_t *model_ids, const float *model_scores, size_t n_model,
                     const char *extra, size_t extra_len, const int32_t *extra_gen,
                     const int64_t *extra_num, const int64_t *extra_pop, size_t n_extra) {
    qac_pool_scratch_t *s = pool->s;
    const size_t chars = count_chars(prefix, prefix_len);
    const double L = (double)(chars < 10 ? chars : 10) / 10.0; /* min(len(p), 10) / 10 */
    const double pw = (double)count_spaces(prefix, prefix_len);
    const double lp = (double)chars;
    size_t cut = prefix_len; /* bytes up to the prefix's last space, included */
    while (cut && prefix[cut - 1] != ' ') cut--;
    const double exp_m10 = exp(-10.0);
    if (prev_len > s->prev_cap) return QAC_E_CAPACITY;
    const size_t n_pieces = prev_len ? split_prev(s, prev, prev_len) : 0;

    /* the beam's rows: flagged, scored, ranked after the previous query is dropped */
    for (size_t i = 0; i < n_model; i++) {
        int32_t id = model_ids[i];
        if (id < 0 || (size_t)id >= rk->n_labels) return QAC_E_RANGE;
        const char *t = rk->text + rk->start[id];
        size_t n = (size_t)(rk->start[id + 1] - rk->start[id] - 1);
        if (prev_len && same(t, n, prev, prev_len)) continue;
        uint64_t h = fnv1a(t, n);
        if (find_row(pool, t, n, h) >= 0) return QAC_E_INPUT; /* the beam repeats a label */
        if (pool->n == s->cap) return QAC_E_CAPACITY;
        int32_t r = add_row(pool, t, n, h, id, QAC_LT_MODEL);
        double *x = s->x + (size_t)r * QAC_LT_NF;
        double sc = (double)model_scores[i];
        double ls = sc > exp_m10 ? log(sc) : -10.0;
        x[QAC_LT_MODEL] = 1.0;
        x[F_LOGSCORE] = ls;
        x[F_LOGSCORE_L] = ls * L;
        x[F_RANK] = 1.0 / (double)(r + 1);
        x[F_LOGPOP] = rk->logpop[id];
        x[F_WORDS] = (double)count_spaces(t, n) - pw;
        x[F_CHARS] = ((double)count_chars(t, n) - lp) / 10.0;
    }
    /* the generated texts: new rows, or flags and counts on the rows they repeat */
    size_t at = 0;
    for (size_t j = 0; j < n_extra; j++) {
        const char *t = extra + at;
        const char *nl = memchr(t, '\n', extra_len - at);
        size_t n = nl ? (size_t)(nl - t) : extra_len - at;
        if ((nl == NULL) != (j + 1 == n_extra)) return QAC_E_INPUT; /* texts != n_extra */
        at += n + 1;
        int32_t g = extra_gen[j];
        if (g <= QAC_LT_MODEL || g >= QAC_LT_NSRC || extra_num[j] < 0 || extra_pop[j] < 0)
            return QAC_E_INPUT;
        if (same(t, n, prev, prev_len) || n < prefix_len || memcmp(t, prefix, prefix_len))
            continue;
        uint64_t h = fnv1a(t, n);
        int32_t r = find_row(pool, t, n, h);
        double *x;
        if (r < 0) {
            if (pool->n == s->cap) return QAC_E_CAPACITY;
            r = add_row(pool, t, n, h, -1 - (int32_t)j, g);
            x = s->x + (size_t)r * QAC_LT_NF;
            x[F_LOGPOP] = log1p((double)extra_pop[j]);
            if (prev_len) {
                x[F_OVERLAP] = overlap(s, n_pieces, t + cut, n - cut);
                x[F_EXTENDS] = n >= prev_len && memcmp(t, prev, prev_len) == 0;
            }
            x[F_WORDS] = (double)count_spaces(t, n) - pw;
            x[F_CHARS] = ((double)count_chars(t, n) - lp) / 10.0;
        } else {
            x = s->x + (size_t)r * QAC_LT_NF;
        }
        /* a row made several times keeps the largest count / recency */
        x[g] = 1.0;
        if (g == QAC_LT_HISTORY) {
            double rec = 1.0 / (1.0 + (double)extra_num[j]);
            if (rec > x[F_HREC]) x[F_HREC] = rec;
        } else if (g != QAC_LT_MPC) {
            double c = log1p((double)extra_num[j]);
            if (c > x[F_GEN]) x[F_GEN] = c;
        }
    }
    if (n_extra == 0 && extra_len) return QAC_E_INPUT;
    /* the features derived from the others, and the scores */
    for (size_t r = 0; r < pool->n; r++) {
        double *x = s->x + r * QAC_LT_NF;
        x[F_LOGPOP_L] = x[F_LOGPOP] * L;
        x[F_SEEN] = x[F_LOGPOP] > 0;
        x[F_GEN_L] = x[F_GEN] * L;
        x[F_HREC_L] = x[F_HREC] * L;
        double sc = 0.0;
        for (size_t f = 0; f < QAC_LT_NF; f++) sc += x[f] * rk->w[f];
        s->order[r].score = sc;
        s->order[r].row = (int32_t)r;
    }
    return QAC_OK;
}

int qac_rank_pool(const qac_ranker_t *ranker, qac_pool_scratch_t *scratch,
                  const char *prefix, size_t prefix_len, const char *prev, size_t prev_len,
                  const int32_t *model_ids, const float *model_scores, size_t n_model,
                  const char *extra, size_t extra_len, const int32_t *extra_gen,
                  const int64_t *extra_num, const int64_t *extra_pop, size_t n_extra,
                  int32_t *out_ref, int32_t *out_src, double *out_score, size_t out_cap,
                  size_t *out_n) {
    if (!out_n) return QAC_E_INPUT;
    *out_n = 0;
    if (!ranker || !scratch || (prefix_len && !prefix) || (prev_len && !prev) ||
        (n_model && (!model_ids || !model_scores)) || ((extra_len || n_extra) && !extra) ||
        (n_extra && (!extra_gen || !extra_num || !extra_pop)) ||
        (out_cap && (!out_ref || !out_src || !out_score)) || n_extra > INT32_MAX ||
        n_model > INT32_MAX)
        return QAC_E_INPUT;
    pool_t pool = {scratch, 0};
    int rc = fill_pool(ranker, &pool, prefix ? prefix : "", prefix_len, prev ? prev : "",
                       prev_len, model_ids, model_scores, n_model, extra, extra_len, extra_gen,
                       extra_num, extra_pop, n_extra);
    size_t n = pool.n;
    if (rc == QAC_OK && n > out_cap) rc = QAC_E_CAPACITY;
    if (rc == QAC_OK) {
        qsort(scratch->order, n, sizeof *scratch->order, by_score);
        for (size_t i = 0; i < n; i++) {
            int32_t r = scratch->order[i].row;
            out_ref[i] = scratch->row_ref[r];
            out_src[i] = scratch->row_src[r];
            out_score[i] = scratch->order[i].score;
        }
        *out_n = n;
    }
    clear_rows(&pool);
    return rc;
}

int qac_complete_pool(const qac_featurizer_t *featurizer, const qac_model_t *model,
                      qac_scratch_t *scratch, const qac_ranker_t *ranker,
                      qac_pool_scratch_t *pool_scratch,
                      const char *prefix, size_t prefix_len, const char *prev, size_t prev_len,
                      size_t beam, size_t topk, int64_t lo, int64_t hi,
                      int32_t *feat_idx, float *feat_val, size_t feat_cap,
                      int32_t *model_ids, float *model_scores,
                      const char *extra, size_t extra_len, const int32_t *extra_gen,
                      const int64_t *extra_num, const int64_t *extra_pop, size_t n_extra,
                      int32_t *out_ref, int32_t *out_src, double *out_score, size_t out_cap,
                      size_t *out_n) {
    if (!out_n) return QAC_E_INPUT;
    *out_n = 0;
    size_t n_model = 0;
    if (lo < hi) {
        int rc = qac_predict_text(featurizer, model, scratch, prefix, prefix_len, prev,
                                  prev_len, beam, topk, lo, hi, feat_idx, feat_val, feat_cap,
                                  model_ids, model_scores, topk, &n_model);
        if (rc) return rc;
    }
    return qac_rank_pool(ranker, pool_scratch, prefix, prefix_len, prev, prev_len, model_ids,
                         model_scores, n_model, extra, extra_len, extra_gen, extra_num,
                         extra_pop, n_extra, out_ref, out_src, out_score, out_cap, out_n);
}

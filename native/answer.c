/* The answerer: one keystroke of completion in one call (see qac_answer.h). */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "qac.h"
#include "qac_match.h"

enum {
#define QAC_ENUM(e, n, d) F_##e,
    QAC_FEATURES(QAC_ENUM)
#undef QAC_ENUM
    F_END
};
_Static_assert(F_END == QAC_NF, "QAC_NF is out of step with QAC_FEATURES");

static const char *const feature_names[QAC_NF] = {
#define QAC_NAME(e, n, d) n,
    QAC_FEATURES(QAC_NAME)
#undef QAC_NAME
};

static const char *const source_names[QAC_NSRC] = {"model", "mpc", "history", "session",
                                                    "suffix", "word", "fresh", "typo",
                                                    "words"};
/* the source an answer is shown with: the first of these that made it */
static const int shown_first[QAC_NSRC] = {QAC_SRC_HISTORY, QAC_SRC_MODEL, QAC_SRC_FRESH,
                                          QAC_SRC_MPC, QAC_SRC_SESSION, QAC_SRC_SUFFIX,
                                          QAC_SRC_WORD, QAC_SRC_WORDS, QAC_SRC_TYPO};
/* the sources with an is_<source> feature column (IS_MODEL .. IS_WORD, in order) */
#define N_SRC_FEATURES 6
_Static_assert(F_IS_WORD - F_IS_MODEL + 1 == N_SRC_FEATURES, "one is_ column per source");

#define MAX_ROWS ((size_t)1 << 24)
#define NOT_IN_BEAM (-12.0)
#define LOG_FLOOR (-10.0)

const char *qac_feature_name(int i) { return i >= 0 && i < QAC_NF ? feature_names[i] : NULL; }
const char *qac_source_name(int s) { return s >= 0 && s < QAC_NSRC ? source_names[s] : NULL; }

/* A tree node as the walk reads it. Leaves are nodes too: their test always sends
 * a row to the leaf itself, so a walk of a tree's depth in steps, with no branch on
 * where it is, ends on the row's leaf. */
typedef struct {
    double threshold; /* x <= threshold: child[0], else child[1] (a leaf: +inf) */
    double value;     /* a leaf's value */
    int32_t feature;
    int32_t child[2];
    int32_t pad;
} node_t;

struct qac_answerer {
    const qac_featurizer_t *featurizer;
    const qac_model_t *model;
    size_t feat_cap;
    qac_labels_view lab;
    size_t n_labels;
    qac_forest_view forest;
    node_t *nodes;   /* the forest's nodes and leaves packed (a private copy: small) */
    int32_t *root;   /* n_trees: each tree's root in nodes */
    int32_t *depth;  /* n_trees: the steps from its root to its deepest leaf */
    qac_rmq_t by_pop; /* the most popular labels of a range */
    qac_lcp_t tree;   /* the labels' child table (lab.tree): the typo search's trie */
    /* every word start of every label (label, byte offset), sorted by the text from
     * there to the label's end: the labels with a word that starts with a token */
    const int32_t *w_label, *w_off; /* the caller's (lab.word_label, lab.word_off) */
    size_t n_words;
    qac_rmq_t w_by_pop;
};

typedef struct {
    const char *text;
    size_t len;
    uint64_t hash;
    int32_t ref;      /* label id, or -1 - j for extra j / history j / session j (see out) */
    int32_t label;    /* label id or -1 */
    uint32_t sources; /* bitmask */
    size_t slot;
    int64_t pop;      /* popularity of a text that is not a label (from the extras) */
    double model_logscore, model_rank, mpc_rank, gen_logcount;
    double hist_count, hist_age;
    int32_t hist_order; /* index among the matching history entries, by recency; -1 none */
    double sess_count, sess_rank;
    double recent;      /* times issued in the last days of the training log, + live */
    double live;        /* live: the decayed count an extra text came with (not a label) */
    int32_t group;      /* the group it is ranked in (0, WORDS_GROUP, TYPO_GROUP, GUESS_GROUP) */
    int32_t edits;      /* typo corrections (0: none) */
    int32_t as_mpc;     /* a match: a most popular completion of what was meant */
} row_t;

typedef struct {
    uint64_t h;
    const char *p;
    size_t n;
} piece_t;

typedef struct {
    double score;
    int32_t row;
    int32_t group;
} ranked_t;

/* a range of an array whose entries come out most popular first (typo and word
 * matches): a heap of these, ordered by group, then popularity */
typedef struct {
    int32_t group;
    int64_t pop;
    size_t pos, lo, hi;
} span_t;

#define MAX_SPANS 1024

typedef struct {
    double age; /* < 0 unknown: sorts after known ages, then by index */
    int32_t idx;
    int32_t row;
} hmatch_t;

struct qac_answer_scratch {
    qac_scratch_t *beam;
    size_t max_beam, max_model, max_rows, max_prev, feat_cap;
    int32_t *feat_idx;
    float *feat_val;
    int32_t *ids;
    float *scores;
    row_t *rows;
    int32_t *slot; /* hash table: row + 1, 0 free */
    size_t hmask;
    double *x;     /* max_rows * QAC_NF */
    ranked_t *order;
    hmatch_t *hm;  /* max_rows */
    piece_t *pieces; /* max_prev + 1 */
    uint32_t *stamp; /* max_prev + 1 */
    uint32_t tick;
    uint32_t *gset; /* the previous query's 3-grams (prev_grams): 2 * max_prev slots */
    uint64_t *row_key; /* max_rows: the near-duplicate keys of the rows kept */
    qac_fuzzy_t fuzzy;
    qac_fuzzy_range ranges[MAX_SPANS];
    span_t heap[3 * MAX_SPANS];
};
_Static_assert(QAC_MAX_MPC + 1 <= 3 * MAX_SPANS, "add_mpc's heap fits the scratch's");

/* ---- validation ------------------------------------------------------------- */

static int check_labels(const qac_labels_view *l, size_t *n_out) {
    if (!l->offsets || l->n_offsets < 1 || (l->text_len && !l->text)) return QAC_E_INPUT;
    size_t n = l->n_offsets - 1;
    if (l->n_popularity != n || l->n_popcum != n + 1 || l->n_counts != n || l->n_recent != n ||
        (n && (!l->popularity || !l->popcum || !l->counts || !l->recent)))
        return QAC_E_INPUT;
    if (n > (size_t)INT32_MAX - 1) return QAC_E_RANGE;
    if (l->offsets[0] != 0) return QAC_E_RANGE;
    if (n == 0) {
        if (l->text_len != 0 || (l->popcum && l->popcum[0] != 0)) return QAC_E_RANGE;
        *n_out = 0;
        return QAC_OK;
    }
    if (l->offsets[n] != (int64_t)l->text_len + 1 || l->popcum[0] != 0) return QAC_E_RANGE;
    const unsigned char *t = (const unsigned char *)l->text;
    for (size_t i = 0; i < n; i++) {
        int64_t a = l->offsets[i], b = l->offsets[i + 1];
        if (b <= a || b > (int64_t)l->text_len + 1) return QAC_E_RANGE;
        if (i + 1 < n && t[b - 1] != '\n') return QAC_E_RANGE;
        if (memchr(t + a, '\n', (size_t)(b - 1 - a))) return QAC_E_RANGE;
        if (l->popularity[i] < 0 || l->popcum[i + 1] - l->popcum[i] != l->popularity[i] ||
            l->popcum[i + 1] < l->popcum[i] || l->counts[i] < 0 || l->recent[i] < 0 ||
            l->recent[i] > l->counts[i])
            return QAC_E_RANGE;
        if (i) { /* strictly increasing, bytewise */
            int64_t pa = l->offsets[i - 1];
            size_t na = (size_t)(a - 1 - pa), nb = (size_t)(b - 1 - a);
            int c = memcmp(t + pa, t + a, na < nb ? na : nb);
            if (c > 0 || (c == 0 && na >= nb)) return QAC_E_RANGE;
        }
    }
    *n_out = n;
    return QAC_OK;
}

static int check_forest(const qac_forest_view *f) {
    if ((f->n_nodes && (!f->feature || !f->threshold || !f->left || !f->right)) ||
        (f->n_leaves && !f->leaf) || (f->n_trees && !f->roots) || !isfinite(f->base))
        return QAC_E_INPUT;
    if (f->n_nodes > (size_t)INT32_MAX || f->n_leaves > (size_t)INT32_MAX) return QAC_E_RANGE;
    for (size_t j = 0; j < f->n_leaves; j++)
        if (!isfinite(f->leaf[j])) return QAC_E_RANGE;
    for (size_t j = 0; j < f->n_nodes; j++) {
        if (f->feature[j] < 0 || f->feature[j] >= QAC_NF || isnan(f->threshold[j]))
            return QAC_E_RANGE;
        int32_t c[2] = {f->left[j], f->right[j]};
        for (int s = 0; s < 2; s++) {
            /* children come after their parent: no cycle, every walk ends */
            if (c[s] >= 0 ? ((size_t)c[s] <= j || (size_t)c[s] >= f->n_nodes)
                          : (size_t)~c[s] >= f->n_leaves)
                return QAC_E_RANGE;
        }
    }
    for (size_t t = 0; t < f->n_trees; t++) {
        int32_t r = f->roots[t];
        if (r >= 0 ? (size_t)r >= f->n_nodes : (size_t)~r >= f->n_leaves) return QAC_E_RANGE;
    }
    return QAC_OK;
}

/* a word start while the index is built: where its text starts and ends */
typedef struct {
    const char *p;
    uint32_t n;
    int32_t label, off;
} wstart_t;

/* compare the texts from two word starts to their labels' ends, then the labels */
static int cmp_starts(const char *pa, size_t na, int32_t la, const char *pb, size_t nb,
                      int32_t lb) {
    size_t k = na < nb ? na : nb;
    int c = k ? memcmp(pa, pb, k) : 0;
    if (c) return c;
    if (na != nb) return na < nb ? -1 : 1;
    return (la > lb) - (la < lb);
}

static int by_text(const void *x, const void *y) {
    const wstart_t *a = x, *b = y;
    return cmp_starts(a->p, a->n, a->label, b->p, b->n, b->label);
}

static inline int word_start(const char *t, int64_t s, int64_t j) {
    return j == s || (t[j - 1] == ' ' && t[j] != ' ');
}

int qac_words_index(const char *text, size_t text_len, const int64_t *offsets,
                    size_t n_offsets, int32_t *word_label, int32_t *word_off, size_t cap,
                    size_t *n_words) {
    if (!offsets || !n_words || n_offsets < 1 || (text_len && !text) ||
        (cap && (!word_label || !word_off)))
        return QAC_E_INPUT;
    *n_words = 0;
    const size_t n = n_offsets - 1;
    if (n > (size_t)INT32_MAX - 1 || offsets[0] != 0) return QAC_E_RANGE;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        int64_t s = offsets[i], e = offsets[i + 1] - 1;
        if (e < s || e > (int64_t)text_len || e - s > (int64_t)INT32_MAX) return QAC_E_RANGE;
        for (int64_t j = s; j < e; j++) total += word_start(text, s, j);
    }
    if (total > (size_t)INT32_MAX) return QAC_E_RANGE;
    *n_words = total;
    if (cap < total) return QAC_E_CAPACITY;
    wstart_t *w = malloc((total + 1) * sizeof *w);
    if (!w) return QAC_E_NOMEM;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        int64_t s = offsets[i], e = offsets[i + 1] - 1;
        for (int64_t j = s; j < e; j++)
            if (word_start(text, s, j))
                w[k++] = (wstart_t){text + j, (uint32_t)(e - j), (int32_t)i, (int32_t)(j - s)};
    }
    qsort(w, k, sizeof *w, by_text);
    for (size_t i = 0; i < k; i++) {
        word_label[i] = w[i].label;
        word_off[i] = w[i].off;
    }
    free(w);
    return QAC_OK;
}

int qac_child_table(const char *text, size_t text_len, const int64_t *offsets,
                    size_t n_offsets, int32_t *out, size_t cap) {
    if (!offsets || n_offsets < 1 || (text_len && !text) || (cap && !out)) return QAC_E_INPUT;
    const size_t n = n_offsets - 1;
    if (n > (size_t)INT32_MAX - 1 || offsets[0] != 0) return QAC_E_RANGE;
    for (size_t i = 0; i < n; i++)
        if (offsets[i + 1] <= offsets[i] || offsets[i + 1] > (int64_t)text_len + 1)
            return QAC_E_RANGE;
    if (cap < 4 * (n + 1)) return QAC_E_CAPACITY;
    return qac_lcp_build(text, offsets, n, out);
}

/* the given child table is exactly the one qac_child_table builds for these labels
 * (checked labels): built again aside and compared, so a damaged table cannot send
 * the typo search out of bounds or round in circles */
static int check_tree(qac_answerer_t *a) {
    const qac_labels_view *l = &a->lab;
    const size_t n = a->n_labels, size = 4 * (n + 1);
    if (!l->tree || l->n_tree != size) return QAC_E_INPUT;
    int32_t *fresh = malloc(size * sizeof *fresh);
    if (!fresh) return QAC_E_NOMEM;
    int rc = qac_lcp_build(l->text, l->offsets, n, fresh);
    if (rc == QAC_OK && memcmp(fresh, l->tree, size * sizeof *fresh)) rc = QAC_E_RANGE;
    free(fresh);
    if (rc == QAC_OK) a->tree = qac_lcp_view(l->tree, n);
    return rc;
}

/* the given word-start index is exactly qac_words_index's for these labels: every
 * entry a word start, strictly increasing (so no start twice), as many as there
 * are word starts (so none missing); then its range maxima */
static int check_words(qac_answerer_t *a) {
    const qac_labels_view *l = &a->lab;
    if (l->n_words && (!l->word_label || !l->word_off)) return QAC_E_INPUT;
    const char *t = l->text;
    size_t total = 0;
    for (size_t i = 0; i < a->n_labels; i++) {
        int64_t s = l->offsets[i], e = l->offsets[i + 1] - 1;
        for (int64_t j = s; j < e; j++) total += word_start(t, s, j);
    }
    if (total != l->n_words) return QAC_E_RANGE;
    for (size_t i = 0; i < total; i++) {
        int32_t id = l->word_label[i], off = l->word_off[i];
        if (id < 0 || (size_t)id >= a->n_labels || off < 0) return QAC_E_RANGE;
        int64_t s = l->offsets[id], e = l->offsets[id + 1] - 1;
        if (off >= e - s || !word_start(t, s, s + off)) return QAC_E_RANGE;
        if (i) {
            int32_t pid = l->word_label[i - 1], poff = l->word_off[i - 1];
            int64_t ps = l->offsets[pid] + poff, pe = l->offsets[pid + 1] - 1;
            if (cmp_starts(t + ps, (size_t)(pe - ps), pid, t + s + off,
                           (size_t)(e - s - off), id) >= 0)
                return QAC_E_RANGE;
        }
    }
    a->w_label = l->word_label;
    a->w_off = l->word_off;
    a->n_words = total;
    return qac_rmq_init(&a->w_by_pop, l->popularity, a->w_label, total);
}

int qac_answerer_new(const qac_featurizer_t *featurizer, const qac_model_t *model,
                     const qac_labels_view *labels, const qac_forest_view *forest,
                     qac_answerer_t **out) {
    if (!out) return QAC_E_INPUT;
    *out = NULL;
    if (!labels || !forest || (!featurizer) != (!model)) return QAC_E_INPUT;
    size_t n = 0, feat_cap = 0;
    int rc = check_labels(labels, &n);
    if (rc) return rc;
    rc = check_forest(forest);
    if (rc) return rc;
    if (model) {
        size_t depth = 0, n_blocks = 0, n_feat = 0;
        int64_t n_model_labels = 0, model_features = 0;
        rc = qac_model_info(model, &depth, &n_model_labels, &model_features);
        if (rc) return rc;
        if (n_model_labels != (int64_t)n) return QAC_E_RANGE;
        rc = qac_featurizer_info(featurizer, &n_blocks, &n_feat);
        if (rc) return rc;
        if ((int64_t)n_feat > model_features) return QAC_E_RANGE;
        rc = qac_featurize_max_capacity(featurizer, &feat_cap);
        if (rc) return rc;
    }
    qac_answerer_t *a = calloc(1, sizeof *a);
    if (!a) return QAC_E_NOMEM;
    a->featurizer = featurizer;
    a->model = model;
    a->feat_cap = feat_cap;
    a->lab = *labels;
    if (!a->lab.text) a->lab.text = "";
    a->n_labels = n;
    a->forest = *forest;
    /* nodes first, then the leaves at n_nodes + leaf */
    const size_t n_all = forest->n_nodes + forest->n_leaves;
    a->nodes = malloc((n_all + 1) * sizeof *a->nodes);
    a->root = malloc((forest->n_trees + 1) * sizeof *a->root);
    a->depth = malloc((forest->n_trees + 1) * sizeof *a->depth);
    int32_t *level = malloc((n_all + 1) * sizeof *level);
    if (!a->nodes || !a->root || !a->depth || !level) {
        free(level);
        qac_answerer_free(a);
        return QAC_E_NOMEM;
    }
    const int32_t base_leaf = (int32_t)forest->n_nodes;
    for (size_t j = 0; j < forest->n_nodes; j++) {
        int32_t l = forest->left[j], r = forest->right[j];
        a->nodes[j] = (node_t){forest->threshold[j], 0.0, forest->feature[j],
                               {l >= 0 ? l : base_leaf + ~l, r >= 0 ? r : base_leaf + ~r}, 0};
    }
    for (size_t k = 0; k < forest->n_leaves; k++) {
        int32_t me = base_leaf + (int32_t)k;
        a->nodes[me] = (node_t){INFINITY, forest->leaf[k], 0, {me, me}, 0};
    }
    /* depths: children come after their parents, so one pass from each root down */
    for (size_t t = 0; t < forest->n_trees; t++) {
        int32_t r = forest->roots[t];
        a->root[t] = r >= 0 ? r : base_leaf + ~r;
        a->depth[t] = 0;
    }
    for (size_t j = 0; j < n_all; j++) level[j] = -1;
    for (size_t t = 0; t < forest->n_trees; t++) level[a->root[t]] = 0;
    for (size_t j = 0; j < forest->n_nodes; j++) {
        if (level[j] < 0) continue; /* a node no tree reaches */
        for (int c = 0; c < 2; c++) level[a->nodes[j].child[c]] = level[j] + 1;
    }
    for (size_t t = 0; t < forest->n_trees; t++) {
        /* the deepest leaf under this root: the largest level among its nodes, which
         * sit between its root and the next tree's (preorder) */
        int32_t deepest = 0;
        int32_t r = forest->roots[t];
        if (r >= 0) {
            size_t end = forest->n_nodes;
            for (size_t u = 0; u < forest->n_trees; u++)
                if (forest->roots[u] > r && (size_t)forest->roots[u] < end)
                    end = (size_t)forest->roots[u];
            for (size_t j = (size_t)r; j < end; j++)
                if (level[j] >= 0 && level[j] + 1 > deepest) deepest = level[j] + 1;
        }
        a->depth[t] = deepest;
    }
    free(level);
    rc = qac_rmq_init(&a->by_pop, a->lab.popularity, NULL, n);
    if (rc == QAC_OK) rc = check_tree(a);
    if (rc == QAC_OK) rc = check_words(a);
    if (rc) {
        qac_answerer_free(a);
        return rc;
    }
    *out = a;
    return QAC_OK;
}

void qac_answerer_free(qac_answerer_t *answerer) {
    if (!answerer) return;
    free(answerer->nodes);
    free(answerer->root);
    free(answerer->depth);
    qac_rmq_free(&answerer->by_pop);
    qac_rmq_free(&answerer->w_by_pop);
    free(answerer);
}

void qac_answer_scratch_free(qac_answer_scratch_t *s) {
    if (!s) return;
    qac_scratch_free(s->beam);
    free(s->feat_idx);
    free(s->feat_val);
    free(s->ids);
    free(s->scores);
    free(s->rows);
    free(s->slot);
    free(s->x);
    free(s->order);
    free(s->hm);
    free(s->pieces);
    free(s->stamp);
    free(s->gset);
    free(s->row_key);
    free(s);
}

/* the size of the previous query's 3-gram set (prev_grams) for n bytes: 2^bits
 * slots, at least 16 and twice the grams */
static int gram_bits(size_t n) {
    int bits = 4;
    while (((size_t)1 << bits) < 2 * n) bits++;
    return bits;
}

int qac_answer_scratch_new(const qac_answerer_t *a, size_t max_rows, size_t max_beam,
                           size_t max_model, size_t max_prev, qac_answer_scratch_t **out) {
    if (!out) return QAC_E_INPUT;
    *out = NULL;
    if (!a || max_rows == 0 || max_rows > MAX_ROWS || max_prev > MAX_ROWS ||
        max_model > max_rows || max_beam > MAX_ROWS)
        return QAC_E_INPUT;
    qac_answer_scratch_t *s = calloc(1, sizeof *s);
    if (!s) return QAC_E_NOMEM;
    s->max_beam = max_beam;
    s->max_model = max_model;
    s->max_rows = max_rows;
    s->max_prev = max_prev;
    s->feat_cap = a->feat_cap;
    if (a->model && max_model) {
        int rc = qac_scratch_new(a->model, max_beam ? max_beam : 1, max_model, &s->beam);
        if (rc) { qac_answer_scratch_free(s); return rc; }
    }
    size_t slots = 16;
    while (slots < 2 * max_rows) slots *= 2;
    s->hmask = slots - 1;
    s->feat_idx = malloc((s->feat_cap + 1) * sizeof *s->feat_idx);
    s->feat_val = malloc((s->feat_cap + 1) * sizeof *s->feat_val);
    s->ids = malloc((max_model + 1) * sizeof *s->ids);
    s->scores = malloc((max_model + 1) * sizeof *s->scores);
    s->rows = malloc(max_rows * sizeof *s->rows);
    s->slot = calloc(slots, sizeof *s->slot);
    s->x = malloc(max_rows * QAC_NF * sizeof *s->x);
    s->order = malloc(max_rows * sizeof *s->order);
    s->hm = malloc(max_rows * sizeof *s->hm);
    s->pieces = malloc((max_prev + 1) * sizeof *s->pieces);
    s->stamp = calloc(max_prev + 1, sizeof *s->stamp);
    s->gset = malloc(((size_t)1 << gram_bits(max_prev)) * sizeof *s->gset);
    s->row_key = malloc(max_rows * sizeof *s->row_key);
    if (!s->feat_idx || !s->feat_val || !s->ids || !s->scores || !s->rows || !s->slot ||
        !s->x || !s->order || !s->hm || !s->pieces || !s->stamp || !s->gset || !s->row_key) {
        qac_answer_scratch_free(s);
        return QAC_E_NOMEM;
    }
    *out = s;
    return QAC_OK;
}

/* ---- labels ------------------------------------------------------------------ */

static inline const char *label_text(const qac_answerer_t *a, size_t i, size_t *n) {
    int64_t s = a->lab.offsets[i];
    *n = (size_t)(a->lab.offsets[i + 1] - 1 - s);
    return a->lab.text + s;
}

/* memcmp of a label's first min(n, len) bytes with t, then by length */
static int cmp_label(const qac_answerer_t *a, size_t i, const char *t, size_t n, int prefix) {
    size_t m;
    const char *l = label_text(a, i, &m);
    size_t k = m < n ? m : n;
    int c = k ? memcmp(l, t, k) : 0;
    if (c || prefix) return c ? c : (m < n ? -1 : 0);
    return (m > n) - (m < n);
}

/* first label >= t (prefix: first label whose first len(t) bytes are >= t) */
static size_t lower_bound(const qac_answerer_t *a, const char *t, size_t n, int prefix) {
    size_t lo = 0, hi = a->n_labels;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cmp_label(a, mid, t, n, prefix) < 0) lo = mid + 1; else hi = mid;
    }
    return lo;
}

/* first label whose first n bytes are > t (labels starting with t end here) */
static size_t upper_prefix(const qac_answerer_t *a, const char *t, size_t n) {
    size_t lo = 0, hi = a->n_labels;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cmp_label(a, mid, t, n, 1) <= 0) lo = mid + 1; else hi = mid;
    }
    return lo;
}

int qac_label_range(const qac_answerer_t *a, const char *prefix, size_t prefix_len,
                    int64_t *lo, int64_t *hi) {
    if (!a || !lo || !hi || (prefix_len && !prefix)) return QAC_E_INPUT;
    *lo = (int64_t)lower_bound(a, prefix ? prefix : "", prefix_len, 1);
    *hi = (int64_t)upper_prefix(a, prefix ? prefix : "", prefix_len);
    return QAC_OK;
}

static int32_t find_label(const qac_answerer_t *a, const char *t, size_t n, size_t lo,
                          size_t hi) {
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = cmp_label(a, mid, t, n, 0);
        if (c == 0) return (int32_t)mid;
        if (c < 0) lo = mid + 1; else hi = mid;
    }
    return -1;
}

/* ---- text helpers (UTF-8 bytes) --------------------------------------------- */

static inline uint64_t fnv1a(const char *t, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)t[i]) * 1099511628211ULL;
    return h;
}

static inline int same(const char *a, size_t na, const char *b, size_t nb) {
    return na == nb && (na == 0 || memcmp(a, b, na) == 0);
}

static inline int starts_with(const char *t, size_t n, const char *p, size_t np) {
    return n >= np && (np == 0 || memcmp(t, p, np) == 0);
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

static int by_hash(const void *a, const void *b) {
    const piece_t *x = a, *y = b;
    return (x->h > y->h) - (x->h < y->h);
}

/* the words of prev, sorted by hash */
static size_t split_prev(qac_answer_scratch_t *s, const char *prev, size_t n) {
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

/* Share of the words of t (split at ' ') that are words of the previous query,
 * each distinct word of prev counted once. */
static double overlap(qac_answer_scratch_t *s, size_t np, const char *t, size_t nt) {
    if (++s->tick == 0) {
        memset(s->stamp, 0, (s->max_prev + 1) * sizeof *s->stamp);
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

/* the byte 3-gram of " " t " " starting at i (0 <= i < n), as 24 bits */
static inline uint32_t gram3(const char *t, size_t n, size_t i) {
    unsigned char c[3];
    for (int k = 0; k < 3; k++) {
        size_t at = i + (size_t)k; /* position in " " t " " */
        c[k] = at == 0 || at == n + 1 ? ' ' : (unsigned char)t[at - 1];
    }
    return (uint32_t)c[0] << 16 | (uint32_t)c[1] << 8 | c[2];
}

/* the slot of 3-gram g (+ 1, 0 marks a free slot) in the set of 2^bits slots: where
 * it is, or the free slot where it would go (linear probing) */
static inline size_t gram_slot(const uint32_t *set, int bits, uint32_t g) {
    const size_t mask = ((size_t)1 << bits) - 1;
    size_t k = (size_t)(((uint64_t)g * 0x9E3779B97F4A7C15ULL) >> (64 - bits));
    while (set[k] && set[k] != g) k = (k + 1) & mask;
    return k;
}

/* the previous query's 3-grams (of " " prev " ", n >= 1 bytes) as an open-addressed
 * set in s->gset: 2^bits slots (at least twice the grams) of gram + 1, 0 free.
 * Returns bits. */
static int prev_grams(qac_answer_scratch_t *s, const char *prev, size_t n) {
    const int bits = gram_bits(n);
    memset(s->gset, 0, ((size_t)1 << bits) * sizeof *s->gset);
    for (size_t i = 0; i < n; i++) {
        const uint32_t g = gram3(prev, n, i) + 1;
        s->gset[gram_slot(s->gset, bits, g)] = g;
    }
    return bits;
}

/* share of the 3-grams of " " t " " (with repeats) that are 3-grams of prev (bits:
 * prev_grams's, 0 for no previous query) */
static double char3(const qac_answer_scratch_t *s, int bits, const char *t, size_t n) {
    if (n == 0 || bits == 0) return 0.0;
    size_t hits = 0;
    for (size_t i = 0; i < n; i++) {
        const uint32_t g = gram3(t, n, i) + 1;
        hits += s->gset[gram_slot(s->gset, bits, g)] == g;
    }
    return (double)hits / (double)n;
}

/* ---- the pool ---------------------------------------------------------------- */

typedef struct {
    qac_answer_scratch_t *s;
    size_t n;
} pool_t;

static int32_t find_row(const pool_t *p, const char *t, size_t n, uint64_t h) {
    const qac_answer_scratch_t *s = p->s;
    for (size_t k = h & s->hmask;; k = (k + 1) & s->hmask) {
        int32_t r = s->slot[k] - 1;
        if (r < 0) return -1;
        if (s->rows[r].hash == h && same(s->rows[r].text, s->rows[r].len, t, n)) return r;
    }
}

/* the row of text t, made if new (-1 if the pool is full) */
static int32_t row_of(pool_t *p, const char *t, size_t n, int32_t ref) {
    uint64_t h = fnv1a(t, n);
    int32_t r = find_row(p, t, n, h);
    if (r >= 0) return r;
    qac_answer_scratch_t *s = p->s;
    if (p->n == s->max_rows) return -1;
    r = (int32_t)p->n++;
    size_t k = h & s->hmask;
    while (s->slot[k]) k = (k + 1) & s->hmask;
    s->slot[k] = r + 1;
    row_t *w = &s->rows[r];
    memset(w, 0, sizeof *w);
    w->text = t;
    w->len = n;
    w->hash = h;
    w->ref = ref;
    w->label = -1;
    w->slot = k;
    w->model_logscore = NOT_IN_BEAM;
    w->hist_age = QAC_MISSING_AGE;
    w->hist_order = -1;
    return r;
}

static void clear_rows(pool_t *p) {
    for (size_t r = 0; r < p->n; r++) p->s->slot[p->s->rows[r].slot] = 0;
    p->n = 0;
}

static int by_score(const void *a, const void *b) {
    const ranked_t *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    return (x->row > y->row) - (x->row < y->row);
}

static int by_rank(const void *a, const void *b) {
    const ranked_t *x = a, *y = b;
    if (x->group != y->group) return x->group < y->group ? -1 : 1;
    return by_score(a, b);
}

static int by_recency(const void *a, const void *b) {
    const hmatch_t *x = a, *y = b;
    int ux = x->age < 0, uy = y->age < 0;
    if (ux != uy) return ux - uy;
    if (!ux && x->age != y->age) return x->age < y->age ? -1 : 1;
    return (x->idx > y->idx) - (x->idx < y->idx);
}

/* every row's score: base + the leaf each tree sends it to. Tree by tree, so a
 * tree's nodes stay in cache across the rows; rows in blocks of WALK walked side by
 * side for the tree's depth in steps, with no branch on where each is, so their
 * independent chains of loads overlap. */
#define WALK 8
static void forest_scores(const qac_answerer_t *a, const double *x, size_t n, ranked_t *out) {
    const qac_forest_view *f = &a->forest;
    const node_t *nodes = a->nodes;
    for (size_t r = 0; r < n; r++) {
        out[r].score = f->base;
        out[r].row = (int32_t)r;
    }
    for (size_t t = 0; t < f->n_trees; t++) {
        const int32_t root = a->root[t], depth = a->depth[t];
        for (size_t r0 = 0; r0 < n; r0 += WALK) {
            const size_t m = n - r0 < WALK ? n - r0 : WALK;
            const double *xr = x + r0 * QAC_NF;
            int32_t j[WALK];
            for (size_t i = 0; i < WALK; i++) j[i] = root;
            for (int32_t step = 0; step < depth; step++)
                for (size_t i = 0; i < m; i++) {
                    const node_t *nd = &nodes[j[i]];
                    j[i] = nd->child[xr[i * QAC_NF + (size_t)nd->feature] > nd->threshold];
                }
            for (size_t i = 0; i < m; i++) out[r0 + i].score += nodes[j[i]].value;
        }
    }
}

/* seconds since a time (>= 0), -1 when the time is unknown (<= 0), NaN for NaN */
static inline double age_of(const qac_context_view *ctx, double t) {
    if (isnan(t)) return t;
    if (t <= 0) return -1.0;
    return ctx->now > t ? ctx->now - t : 0.0;
}

/* next '\n'-separated text of a blob; QAC_E_INPUT when the count is off */
static int next_text(const char *blob, size_t len, size_t *at, size_t j, size_t n,
                     const char **t, size_t *tn) {
    const char *p = blob + *at;
    const char *nl = memchr(p, '\n', len - *at);
    size_t m = nl ? (size_t)(nl - p) : len - *at;
    if ((nl == NULL) != (j + 1 == n)) return QAC_E_INPUT;
    *t = p;
    *tn = m;
    *at += m + 1;
    return QAC_OK;
}

/* Past query j of the user (text t, n bytes) as a row of the pool, marked as the
 * user's with its count and age and recorded among the history matches (s->hm).
 * *row is NULL for an entry whose text is already the user's (a repeat: the first
 * stands). QAC_E_CAPACITY when the pool is full. */
static int mark_past(pool_t *pool, const qac_context_view *ctx, size_t n_extra, size_t j,
                     const char *t, size_t n, size_t *n_hm, row_t **row) {
    qac_answer_scratch_t *s = pool->s;
    *row = NULL;
    int32_t r = row_of(pool, t, n, -1 - (int32_t)(n_extra + j));
    if (r < 0) return QAC_E_CAPACITY;
    row_t *w = &s->rows[r];
    if (w->sources & (1u << QAC_SRC_HISTORY)) return QAC_OK;
    const double age = age_of(ctx, ctx->history_time[j]);
    w->sources |= 1u << QAC_SRC_HISTORY;
    w->hist_count = log1p((double)ctx->history_count[j]);
    w->hist_age = age >= 0 ? log1p(age) : QAC_MISSING_AGE;
    s->hm[(*n_hm)++] = (hmatch_t){age, (int32_t)j, r};
    *row = w;
    return QAC_OK;
}

/* the history matches [first, n_hm) by recency, each row given its place */
static void order_past(qac_answer_scratch_t *s, size_t first, size_t n_hm) {
    qsort(s->hm + first, n_hm - first, sizeof *s->hm, by_recency);
    for (size_t i = first; i < n_hm; i++) s->rows[s->hm[i].row].hist_order = (int32_t)i;
}

static int add_mpc(const qac_answerer_t *a, pool_t *pool, const char *prev, size_t prev_len,
                   size_t n_mpc, int64_t lo, int64_t hi);

static int fill(const qac_answerer_t *a, pool_t *pool, const char *prefix, size_t plen,
                const qac_context_view *ctx, const qac_extra_view *ex, size_t beam,
                size_t n_model, int64_t lo, int64_t hi, size_t *n_hist) {
    qac_answer_scratch_t *s = pool->s;
    const char *prev = ctx->prev ? ctx->prev : "";
    const size_t prev_len = ctx->prev_len;
    *n_hist = 0;

    /* the beam's answers */
    if (n_model && lo < hi && a->model) {
        size_t got = 0;
        int rc = qac_predict_text(a->featurizer, a->model, s->beam, prefix, plen, prev,
                                  prev_len, beam, n_model, lo, hi, s->feat_idx, s->feat_val,
                                  s->feat_cap, s->ids, s->scores, s->max_model, &got);
        if (rc) return rc;
        size_t kept = 0;
        for (size_t i = 0; i < got; i++) {
            int32_t id = s->ids[i];
            if (id < lo || id >= hi) return QAC_E_RANGE;
            size_t n;
            const char *t = label_text(a, (size_t)id, &n);
            if (prev_len && same(t, n, prev, prev_len)) continue;
            size_t before = pool->n;
            int32_t r = row_of(pool, t, n, id);
            if (r < 0) return QAC_E_CAPACITY;
            if ((size_t)r < before) return QAC_E_RANGE; /* the beam repeats a label */
            row_t *w = &s->rows[r];
            w->label = id;
            w->sources |= 1u << QAC_SRC_MODEL;
            double sc = (double)s->scores[i];
            w->model_logscore = sc > exp(LOG_FLOOR) ? log(sc) : LOG_FLOOR;
            w->model_rank = 1.0 / (double)(++kept);
        }
    }

    /* the user's past queries that start with the prefix */
    size_t n_hm = 0;
    size_t at = 0;
    for (size_t j = 0; j < ctx->n_history; j++) {
        const char *t;
        size_t n;
        if (next_text(ctx->history, ctx->history_len, &at, j, ctx->n_history, &t, &n))
            return QAC_E_INPUT;
        if (ctx->history_count[j] < 1 || isnan(ctx->history_time[j])) return QAC_E_INPUT;
        if (!starts_with(t, n, prefix, plen) || n == 0 || (prev_len && same(t, n, prev, prev_len)))
            continue;
        row_t *w;
        int rc = mark_past(pool, ctx, ex->n, j, t, n, &n_hm, &w);
        if (rc) return rc;
    }
    if (at != ctx->history_len + (ctx->n_history ? 1 : 0)) return QAC_E_INPUT;
    order_past(s, 0, n_hm);

    /* the most popular completions */
    if (ex->n_mpc) {
        int rc = add_mpc(a, pool, prev, prev_len, ex->n_mpc, lo, hi);
        if (rc) return rc;
    }

    /* the generated candidates */
    at = 0;
    size_t n_mpc = 0;
    for (size_t j = 0; j < ex->n; j++) {
        const char *t;
        size_t n;
        if (next_text(ex->text, ex->text_len, &at, j, ex->n, &t, &n)) return QAC_E_INPUT;
        int32_t g = ex->source[j];
        if (g <= QAC_SRC_MODEL || (g >= N_SRC_FEATURES && g != QAC_SRC_FRESH) ||
            g == QAC_SRC_HISTORY || ex->count[j] < 0 ||
            ex->popularity[j] < 0 || (g == QAC_SRC_MPC && ex->n_mpc))
            return QAC_E_INPUT;
        size_t mpc_at = g == QAC_SRC_MPC ? ++n_mpc : 0;
        if (!starts_with(t, n, prefix, plen) || n == 0 || (prev_len && same(t, n, prev, prev_len)))
            continue;
        int32_t r = row_of(pool, t, n, -1 - (int32_t)j);
        if (r < 0) return QAC_E_CAPACITY;
        row_t *w = &s->rows[r];
        w->sources |= 1u << g;
        if (ex->popularity[j] > w->pop) w->pop = ex->popularity[j];
        /* live: a fresh query's decayed count */
        if (ex->live) {
            if (!(ex->live[j] >= 0) || !isfinite(ex->live[j])) return QAC_E_INPUT;
            if (ex->live[j] > w->live) w->live = ex->live[j];
        }
        if (g == QAC_SRC_MPC) {
            if (w->mpc_rank == 0.0) w->mpc_rank = 1.0 / (double)mpc_at;
        } else {
            double c = log1p((double)ex->count[j]);
            if (c > w->gen_logcount) w->gen_logcount = c;
        }
    }
    if (at != ex->text_len + (ex->n ? 1 : 0)) return QAC_E_INPUT;
    /* this session's queries, most recent first: the session features of the rows
     * they repeat (they are candidates as the user's past queries, through the
     * history list, which the stores also write them to) */
    at = 0;
    for (size_t j = 0; j < ctx->n_session; j++) {
        const char *t;
        size_t n;
        if (next_text(ctx->session, ctx->session_len, &at, j, ctx->n_session, &t, &n))
            return QAC_E_INPUT;
        if (isnan(ctx->session_time[j])) return QAC_E_INPUT;
        if (!starts_with(t, n, prefix, plen) || n == 0) continue;
        int32_t r = find_row(pool, t, n, fnv1a(t, n));
        if (r < 0) continue;
        row_t *w = &s->rows[r];
        w->sess_count += 1.0;
        if (w->sess_rank == 0.0) w->sess_rank = 1.0 / (double)(j + 1);
    }
    if (at != ctx->session_len + (ctx->n_session ? 1 : 0)) return QAC_E_INPUT;

    *n_hist = n_hm;
    return QAC_OK;
}

/* ---- matching beyond the prefix (qac_match_view) ------------------------------ */

#define MAX_TOKENS 16
/* The groups answers are ranked in, in order (the ranker orders within one; see
 * qac_match_view): the prefix's candidates (0); word-prefix matches (in group 0 when
 * the prefix has no own answers); one-edit corrections; the guesses of a damaged
 * head; two-edit corrections. The ranker is fitted on the prefix's candidates only,
 * so a match never outranks one of its own answers. */
#define WORDS_GROUP 1
#define TYPO_GROUP(edits) (2 * (edits))
#define GUESS_GROUP 3
#define WORD_MAX_POPS 2048

typedef struct {
    const char *p;
    size_t n;
    int whole; /* the last word, finished by a space: the whole word */
} token_t;

/* the typed words (empty ones dropped); 0 when there are too many */
static size_t split_tokens(const char *t, size_t n, token_t *tok) {
    size_t k = 0, i = 0;
    while (i < n) {
        while (i < n && t[i] == ' ') i++;
        size_t a = i;
        while (i < n && t[i] != ' ') i++;
        if (i > a) {
            if (k == MAX_TOKENS) return 0;
            tok[k++] = (token_t){t + a, i - a, 0};
        }
    }
    if (k && n && t[n - 1] == ' ') tok[k - 1].whole = 1;
    return k;
}

/* Whether successive words of t start with the tokens, the first at a word of t
 * that starts at or after byte `from` (0: any word). */
static int words_match(const char *t, size_t n, const token_t *tok, size_t k, size_t from) {
    for (size_t at = from; at < n;) {
        /* at: a word start */
        size_t w = at, j = 0;
        for (; j < k && w < n; j++) {
            size_t e = w;
            while (e < n && t[e] != ' ') e++;
            if (!starts_with(t + w, e - w, tok[j].p, tok[j].n) ||
                (tok[j].whole && e - w != tok[j].n))
                break;
            w = e;
            while (w < n && t[w] == ' ') w++;
        }
        if (j == k) return 1;
        while (at < n && t[at] != ' ') at++;
        while (at < n && t[at] == ' ') at++;
    }
    return 0;
}

static int span_before(const span_t *x, const span_t *y) {
    if (x->group != y->group) return x->group < y->group;
    if (x->pop != y->pop) return x->pop > y->pop;
    return x->pos < y->pos;
}

static void heap_push(span_t *h, size_t *n, span_t v) {
    size_t i = (*n)++;
    while (i && span_before(&v, &h[(i - 1) / 2])) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = v;
}

static span_t heap_pop(span_t *h, size_t *n) {
    span_t top = h[0], last = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && span_before(&h[c + 1], &h[c])) c++;
        if (!span_before(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = last;
    return top;
}

/* push [lo, hi) of an array (by its range maxima) unless empty or the heap is full */
static void push_span(span_t *h, size_t *n, size_t cap, const qac_rmq_t *r, int32_t group,
                      size_t lo, size_t hi) {
    if (lo >= hi || *n >= cap) return;
    size_t pos = qac_rmq_argmax(r, lo, hi);
    heap_push(h, n, (span_t){group, qac_rmq_value(r, pos), pos, lo, hi});
}

/* MPC's list, made here: the n_mpc most popular labels of [lo, hi) with popularity
 * > 0, ties to the lower id (the lower text, as MPC breaks them), as source MPC. A
 * label equal to the previous query is not a candidate but keeps its place in the
 * ranks, as in a list the caller gives. */
static int add_mpc(const qac_answerer_t *a, pool_t *pool, const char *prev, size_t prev_len,
                   size_t n_mpc, int64_t lo, int64_t hi) {
    qac_answer_scratch_t *s = pool->s;
    size_t nh = 0, rank = 0;
    /* each pop pushes at most two spans: the heap holds n_mpc + 1 <= its size */
    push_span(s->heap, &nh, 3 * MAX_SPANS, &a->by_pop, 0, (size_t)lo, (size_t)hi);
    while (nh && rank < n_mpc) {
        const span_t v = heap_pop(s->heap, &nh);
        if (v.pop <= 0) break;
        push_span(s->heap, &nh, 3 * MAX_SPANS, &a->by_pop, 0, v.lo, v.pos);
        push_span(s->heap, &nh, 3 * MAX_SPANS, &a->by_pop, 0, v.pos + 1, v.hi);
        rank++;
        size_t n;
        const char *t = label_text(a, v.pos, &n);
        if (n == 0 || (prev_len && same(t, n, prev, prev_len))) continue;
        const int32_t r = row_of(pool, t, n, (int32_t)v.pos);
        if (r < 0) return QAC_E_CAPACITY;
        row_t *w = &s->rows[r];
        w->label = w->ref = (int32_t)v.pos;
        w->sources |= 1u << QAC_SRC_MPC;
        if (w->mpc_rank == 0.0) w->mpc_rank = 1.0 / (double)rank;
    }
    return QAC_OK;
}

/* a row for label id, not yet in the pool or in it from another match: marked with
 * source g and group, the lower group kept. Returns 1 for a new row, 0 for one
 * already there, -1 when the pool is full. */
static int add_match(const qac_answerer_t *a, pool_t *pool, int32_t id, int g, int32_t group,
                     int32_t edits, size_t rank) {
    size_t n;
    const char *t = label_text(a, (size_t)id, &n);
    size_t before = pool->n;
    int32_t r = row_of(pool, t, n, id);
    if (r < 0) return -1;
    row_t *w = &pool->s->rows[r];
    if ((size_t)r >= before) {
        /* most popular first, as MPC lists the completions of a prefix: the ranker
         * reads it so */
        w->label = id;
        w->group = group;
        w->edits = edits;
        w->as_mpc = 1;
        w->mpc_rank = 1.0 / (double)(rank + 1);
    } else if (group < w->group) {
        w->group = group;
        w->edits = edits;
    }
    w->sources |= 1u << g;
    return (size_t)r >= before;
}

/* the lower bound, in the word-start index, of the words >= t (prefix: compare only
 * the first len(t) bytes) */
static size_t word_bound(const qac_answerer_t *a, const char *t, size_t n, int upper) {
    size_t lo = 0, hi = a->n_words;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        size_t m;
        const char *l = label_text(a, (size_t)a->w_label[mid], &m);
        l += a->w_off[mid];
        m -= (size_t)a->w_off[mid];
        size_t k = m < n ? m : n;
        int c = k ? memcmp(l, t, k) : 0;
        if (c == 0 && m < n) c = -1;
        if (upper ? c <= 0 : c < 0) lo = mid + 1; else hi = mid;
    }
    return lo;
}

/* past queries of the user that match by word prefix or within a few edits (the
 * prefix's own ones are in the pool already) */
static int match_history(const qac_answerer_t *a, pool_t *pool, int32_t words_group,
                         const char *prefix, size_t plen, size_t tlen,
                         const qac_context_view *ctx, const qac_extra_view *ex,
                         const token_t *tok, size_t n_tok, int max_edits, int fix_first,
                         size_t *n_hm) {
    const size_t first = *n_hm;
    size_t at = 0;
    /* (fill has checked every entry's count and time already) */
    for (size_t j = 0; j < ctx->n_history; j++) {
        const char *t;
        size_t n;
        if (next_text(ctx->history, ctx->history_len, &at, j, ctx->n_history, &t, &n))
            return QAC_E_INPUT;
        if (n == 0 || starts_with(t, n, prefix, plen) ||
            (ctx->prev_len && same(t, n, ctx->prev, ctx->prev_len)))
            continue;
        int32_t group = -1, edits = 0;
        if (n_tok && words_match(t, n, tok, n_tok, 0)) {
            group = words_group;
        } else if (max_edits && tlen) {
            /* against the prefix without a trailing space (a finished word is not
             * corrected into another); 0 edits there is a completion of the
             * unfinished word, not a match */
            int e = qac_prefix_edits((const unsigned char *)t, n, (const unsigned char *)prefix,
                                     tlen, max_edits, fix_first);
            if (e >= 1 && e <= max_edits) group = TYPO_GROUP(e), edits = e;
        }
        if (group < 0) continue;
        row_t *w;
        int rc = mark_past(pool, ctx, ex->n, j, t, n, n_hm, &w);
        if (rc) return rc;
        if (!w) continue; /* a repeated entry */
        w->sources |= 1u << (edits ? QAC_SRC_TYPO : QAC_SRC_WORDS);
        w->group = group;
        w->edits = edits;
        w->label = find_label(a, t, n, 0, a->n_labels);
        if (w->label >= 0) w->ref = w->label;
    }
    order_past(pool->s, first, *n_hm);
    return QAC_OK;
}

/* labels whose successive words start with the typed words, most popular first */
static int match_words(const qac_answerer_t *a, pool_t *pool, int32_t words_group,
                       const char *prefix, size_t plen, const token_t *tok, size_t n_tok,
                       size_t limit) {
    qac_answer_scratch_t *s = pool->s;
    if (!n_tok || !a->n_words) return QAC_OK;
    /* the rarest typed word: its word starts are the fewest to check */
    size_t best = 0, blo = 0, bhi = 0;
    for (size_t i = 0; i < n_tok; i++) {
        size_t lo = word_bound(a, tok[i].p, tok[i].n, 0), hi = word_bound(a, tok[i].p,
                                                                         tok[i].n, 1);
        if (i == 0 || hi - lo < bhi - blo) best = i, blo = lo, bhi = hi;
    }
    size_t nh = 0, added = 0, pops = 0;
    push_span(s->heap, &nh, 3 * MAX_SPANS, &a->w_by_pop, 1, blo, bhi);
    while (nh && added < limit && pops++ < WORD_MAX_POPS) {
        span_t v = heap_pop(s->heap, &nh);
        push_span(s->heap, &nh, 3 * MAX_SPANS, &a->w_by_pop, 1, v.lo, v.pos);
        push_span(s->heap, &nh, 3 * MAX_SPANS, &a->w_by_pop, 1, v.pos + 1, v.hi);
        const int32_t id = a->w_label[v.pos];
        size_t n;
        const char *t = label_text(a, (size_t)id, &n);
        /* the typed words from `best` on start at this word; the ones before at the
         * words before it */
        size_t from = (size_t)a->w_off[v.pos];
        for (size_t back = 0; back < best && from; back++) {
            size_t e = from;
            while (e && t[e - 1] == ' ') e--;
            while (e && t[e - 1] != ' ') e--;
            from = e;
        }
        if (!words_match(t, n, tok, n_tok, from) || starts_with(t, n, prefix, plen)) continue;
        int r = add_match(a, pool, id, QAC_SRC_WORDS, words_group, 0, added);
        if (r < 0) return QAC_E_CAPACITY;
        added += (size_t)r;
    }
    return QAC_OK;
}

/* labels within a few edits of the prefix, fewer edits first, then most popular */
static int match_typos(const qac_answerer_t *a, pool_t *pool, const char *prefix, size_t plen,
                       int max_edits, int fix_first, size_t limit, size_t max_visits,
                       int64_t elo, int64_t ehi, size_t *visited) {
    qac_answer_scratch_t *s = pool->s;
    qac_fuzzy_t *z = &s->fuzzy;
    z->text = a->lab.text;
    z->offsets = a->lab.offsets;
    z->n = a->n_labels;
    z->tree = &a->tree;
    z->p = (const unsigned char *)prefix;
    z->m = plen;
    z->max_edits = max_edits;
    z->fix_first = fix_first;
    z->ranges = s->ranges;
    z->cap = MAX_SPANS;
    z->max_visits = max_visits;
    qac_fuzzy_search(z);
    *visited = z->visited;
    size_t nh = 0, added = 0, pops = 0;
    for (size_t i = 0; i < z->n_ranges; i++)
        push_span(s->heap, &nh, 3 * MAX_SPANS, &a->by_pop, TYPO_GROUP(z->ranges[i].cost),
                  z->ranges[i].lo, z->ranges[i].hi);
    while (nh && added < limit && pops++ < 8 * limit + 64) {
        span_t v = heap_pop(s->heap, &nh);
        push_span(s->heap, &nh, 3 * MAX_SPANS, &a->by_pop, v.group, v.lo, v.pos);
        push_span(s->heap, &nh, 3 * MAX_SPANS, &a->by_pop, v.group, v.pos + 1, v.hi);
        if ((int64_t)v.pos >= elo && (int64_t)v.pos < ehi) continue; /* starts with it */
        int r = add_match(a, pool, (int32_t)v.pos, QAC_SRC_TYPO, v.group, v.group / 2, added);
        if (r < 0) return QAC_E_CAPACITY;
        added += (size_t)r;
    }
    return QAC_OK;
}

/* the matches beyond the prefix, when its own answers are fewer than wanted */
static int match_more(const qac_answerer_t *a, pool_t *pool, const char *prefix, size_t plen,
                      const qac_context_view *ctx, const qac_extra_view *ex,
                      const qac_match_view *mv, size_t want, int64_t elo, int64_t ehi,
                      size_t *n_hm, size_t *visited) {
    *visited = 0;
    if (!mv || plen == 0) return QAC_OK;
    /* the prefix's own answers: its labels and the user's queries; a generated
     * guess (session, suffix, word: a text nobody issued) does not count */
    const uint32_t guess = 1u << QAC_SRC_SESSION | 1u << QAC_SRC_SUFFIX | 1u << QAC_SRC_WORD;
    size_t own = 0;
    for (size_t r = 0; r < pool->n; r++) {
        row_t *w = &pool->s->rows[r];
        if (w->label < 0 && elo < ehi) {
            w->label = find_label(a, w->text, w->len, (size_t)elo, (size_t)ehi);
            if (w->label >= 0) w->ref = w->label;
        }
        own += w->label >= 0 || (w->sources & ~guess);
    }
    if (own >= want) return QAC_OK;
    const size_t before = pool->n, n_own = *n_hm;
    token_t tok[MAX_TOKENS];
    size_t n_tok = mv->words ? split_tokens(prefix, plen, tok) : 0;
    const size_t chars = count_chars(prefix, plen);
    int edits = mv->typos;
    if (chars < mv->one_typo_chars) edits = 0;
    else if (chars < mv->two_typo_chars && edits > 1) edits = 1;
    if (chars > QAC_FUZZY_MAX_CHARS || plen > QAC_FUZZY_MAX_BYTES) edits = 0;
    const int fix_first = !mv->first_char;
    /* a trailing space finished the word: the corrections keep it (the search runs
     * on the text before it, whose own completions are not corrections) */
    size_t tlen = plen;
    while (tlen && prefix[tlen - 1] == ' ') tlen--;
    /* word-prefix matches join the prefix's own answers only when it has none */
    const int32_t words_group = own ? WORDS_GROUP : 0;
    int rc = match_history(a, pool, words_group, prefix, plen, tlen, ctx, ex, tok, n_tok, edits,
                           fix_first, n_hm);
    if (rc == QAC_OK && n_tok)
        rc = match_words(a, pool, words_group, prefix, plen, tok, n_tok, mv->fuzzy);
    if (rc == QAC_OK && edits && tlen) {
        int64_t tlo = elo, thi = ehi;
        if (tlen < plen) {
            tlo = (int64_t)lower_bound(a, prefix, tlen, 1);
            thi = (int64_t)upper_prefix(a, prefix, tlen);
        }
        rc = match_typos(a, pool, prefix, tlen, edits, fix_first, mv->fuzzy, mv->max_visits,
                         tlo, thi, visited);
    }
    /* Once something matched a prefix that no label or past query starts with, the
     * guesses made from it stay with its own answers when it is one word or labels
     * start with its words before the last (the last word is what it guesses; "miami
     * ct": "miami ctc"); from a damaged head ("weathr chan" makes "weathr channel")
     * they come after the one-edit corrections. */
    size_t head = plen;
    while (head && prefix[head - 1] != ' ') head--;
    if (rc == QAC_OK && elo == ehi && n_own == 0 && pool->n > before && head &&
        lower_bound(a, prefix, head, 1) == upper_prefix(a, prefix, head)) {
        for (size_t r = 0; r < before; r++) {
            row_t *w = &pool->s->rows[r];
            if (w->label < 0 && !(w->sources & ~guess)) w->group = GUESS_GROUP;
        }
    }
    return rc;
}

/* every row's feature vector, then its score */
static void featurize_rows(const qac_answerer_t *a, pool_t *pool, const char *prefix,
                           size_t plen, const qac_context_view *ctx, size_t n_hm,
                           int64_t lo, int64_t hi) {
    qac_answer_scratch_t *s = pool->s;
    const char *prev = ctx->prev ? ctx->prev : "";
    const size_t prev_len = ctx->prev_len;
    const double pchars = (double)count_chars(prefix, plen);
    const double pwords = (double)count_spaces(prefix, plen);
    size_t cut = plen; /* bytes up to the prefix's last space, included */
    while (cut && prefix[cut - 1] != ' ') cut--;
    const size_t n_pieces = prev_len ? split_prev(s, prev, prev_len) : 0;
    const int gbits = prev_len ? prev_grams(s, prev, prev_len) : 0;
    const double range_pop =
        a->n_labels ? (double)(a->lab.popcum[hi] - a->lab.popcum[lo]) : 0.0;
    const double hist_matches = log1p((double)n_hm);
    for (size_t r = 0; r < pool->n; r++) {
        row_t *w = &s->rows[r];
        double *x = s->x + r * QAC_NF;
        if (w->label < 0 && lo < hi) {
            w->label = find_label(a, w->text, w->len, (size_t)lo, (size_t)hi);
            if (w->label >= 0) w->ref = w->label;
        }
        double pop = w->label >= 0 ? (double)a->lab.popularity[w->label] : (double)w->pop;
        for (int g = 0; g < N_SRC_FEATURES; g++) x[F_IS_MODEL + g] = (w->sources >> g) & 1u;
        if (w->as_mpc) x[F_IS_MPC] = 1.0;
        x[F_MODEL_LOGSCORE] = w->model_logscore;
        x[F_MODEL_RANK] = w->model_rank;
        x[F_LOGPOP] = log1p(pop);
        x[F_POP_SHARE] = log((1.0 + pop) / (1.0 + (range_pop > pop ? range_pop : pop)));
        x[F_MPC_RANK] = w->mpc_rank;
        x[F_IS_LABEL] = w->label >= 0;
        x[F_GEN_LOGCOUNT] = w->gen_logcount;
        x[F_PREFIX_CHARS] = pchars;
        x[F_ADDED_CHARS] = (double)count_chars(w->text, w->len) - pchars;
        x[F_ADDED_WORDS] = (double)count_spaces(w->text, w->len) - pwords;
        x[F_HAS_PREV] = prev_len > 0;
        if (prev_len) {
            x[F_PREV_OVERLAP] = w->len > cut ? overlap(s, n_pieces, w->text + cut, w->len - cut)
                                             : 0.0;
            x[F_PREV_CHAR3] = char3(s, gbits, w->text, w->len);
            x[F_EXTENDS_PREV] = starts_with(w->text, w->len, prev, prev_len);
        } else {
            x[F_PREV_OVERLAP] = x[F_PREV_CHAR3] = x[F_EXTENDS_PREV] = 0.0;
        }
        x[F_HAS_HISTORY] = n_hm > 0;
        x[F_HIST_MATCHES] = hist_matches;
        x[F_HIST_COUNT] = w->hist_count;
        x[F_HIST_AGE] = w->hist_age;
        x[F_HIST_RANK] = w->hist_order >= 0 ? 1.0 / (1.0 + (double)w->hist_order) : 0.0;
        x[F_SESS_COUNT] = w->sess_count;
        x[F_SESS_RANK] = w->sess_rank;
        /* live: decayed counts since training add to the recent and whole-log counts */
        double live = w->live;
        if (w->label >= 0 && ctx->label_live) {
            live = ctx->label_live[w->label] * ctx->live_scale;
            if (!(live > 0)) live = 0.0; /* NaN or negative: none */
        }
        const double count =
            (w->label >= 0 ? (double)a->lab.counts[w->label] : 0.0) + live;
        w->recent = (w->label >= 0 ? (double)a->lab.recent[w->label] : 0.0) + live;
        x[F_RECENT_POP] = log1p(w->recent);
        x[F_RECENT_TREND] = log((1.0 + w->recent) / (1.0 + count));
    }
    /* rank by recent count within the row's group of the pool (ties: pool order; so
     * matches never change the features of the prefix's own answers); 0 for none.
     * The order array is free until the scores fill it. */
    for (size_t r = 0; r < pool->n; r++)
        s->order[r] = (ranked_t){s->rows[r].recent, (int32_t)r, s->rows[r].group};
    qsort(s->order, pool->n, sizeof *s->order, by_rank);
    for (size_t i = 0, first = 0; i < pool->n; i++) {
        const int32_t r = s->order[i].row;
        if (i && s->order[i].group != s->order[i - 1].group) first = i;
        s->x[(size_t)r * QAC_NF + F_RECENT_RANK] =
            s->rows[r].recent > 0 ? 1.0 / (1.0 + (double)(i - first)) : 0.0;
    }
    forest_scores(a, s->x, pool->n, s->order);
}

/* ---- near-duplicates ------------------------------------------------------------ */

static int decoration(const unsigned char *w, size_t n) {
    static const char *const words[] = {"www", "http", "https", "com", "net", "org",
                                        "html", "htm"};
    for (size_t i = 0; i < sizeof words / sizeof *words; i++)
        if (strlen(words[i]) == n && memcmp(w, words[i], n) == 0) return 1;
    return 0;
}

uint64_t qac_variant_key(const char *text, size_t len) {
    const unsigned char *t = (const unsigned char *)(text ? text : "");
    uint64_t h = 1469598103934665603ULL;
    size_t i = 0, words = 0;
    while (i < len) {
        while (i < len && !(t[i] >= 0x80 || (t[i] >= '0' && t[i] <= '9') ||
                            (t[i] >= 'a' && t[i] <= 'z') || (t[i] >= 'A' && t[i] <= 'Z')))
            i++;
        size_t a = i;
        while (i < len && (t[i] >= 0x80 || (t[i] >= '0' && t[i] <= '9') ||
                           (t[i] >= 'a' && t[i] <= 'z') || (t[i] >= 'A' && t[i] <= 'Z')))
            i++;
        size_t n = i - a;
        if (n == 0 || decoration(t + a, n)) continue;
        /* after the first word: a lone "s" is a possessive ("macy's", "macy s"), and
         * "and" what "&" spells ("barnes & noble") */
        if (words++ && ((n == 1 && t[a] == 's') || (n == 3 && memcmp(t + a, "and", 3) == 0)))
            continue;
        if (n > 3 && t[a + n - 1] == 's' && t[a + n - 2] != 's' && t[a + n - 2] != 'u' &&
            t[a + n - 2] != 'i')
            n--;
        for (size_t k = 0; k < n; k++) h = (h ^ t[a + k]) * 1099511628211ULL;
    }
    return h;
}

/* Keep the first row of each near-duplicate group in score order (s->order[0..n)),
 * dropping the others, until cap rows are kept. The kept row is the best-ranked
 * variant; it shows the text of the user's own variant instead when they issued one
 * and the best-ranked is not theirs, keeping its place and score. Returns how many
 * rows are kept at the front of s->order. The hash slots of s are free here, so
 * they hold the kept rows' keys. */
static size_t collapse_variants(qac_answer_scratch_t *s, size_t n, size_t cap) {
    size_t kept = 0;
    uint64_t *keys = s->row_key;
    const uint32_t mine = 1u << QAC_SRC_HISTORY;
    for (size_t i = 0; i < n && kept < cap; i++) {
        const row_t *w = &s->rows[s->order[i].row];
        const uint64_t key = qac_variant_key(w->text, w->len);
        size_t j = 0;
        while (j < kept && keys[j] != key) j++;
        if (j == kept) {
            keys[kept] = key;
            s->order[kept++] = s->order[i];
        } else if (w->sources & mine && !(s->rows[s->order[j].row].sources & mine)) {
            s->order[j].row = s->order[i].row;
        }
    }
    return kept;
}

/* ---- highlight spans (qac_answer_out.spans) ------------------------------------- */

#define SPAN_BAND QAC_FUZZY_MAX_EDITS      /* an alignment of at most this many edits */
#define SPAN_CHARS 1024                    /* longest prefix aligned, in bytes */

static inline int cont_byte(char c) { return ((unsigned char)c & 0xC0) == 0x80; }

/* code points in t[0, n) */
static int32_t cps(const char *t, size_t n) {
    int32_t k = 0;
    for (size_t i = 0; i < n; i++) k += !cont_byte(t[i]);
    return k;
}

/* byte offsets of the code points of t[0, n) (at most cap), at[k] after them. Only
 * the first 4 * cap + 4 bytes are read, so the offsets fit whatever the bytes. */
static size_t char_starts(const char *t, size_t n, size_t cap, uint16_t *at) {
    if (n > 4 * cap + 4) n = 4 * cap + 4;
    size_t k = 0;
    for (size_t i = 0; i < n && k < cap; i++)
        if (!cont_byte(t[i])) at[k++] = (uint16_t)i;
    size_t end = n;
    if (k == cap) { /* cut: end the last code point kept */
        end = at[k - 1] + 1u;
        while (end < n && cont_byte(t[end])) end++;
    }
    at[k] = (uint16_t)end;
    return k;
}

static inline int same_char(const char *a, const uint16_t *ai, size_t i, const char *b,
                            const uint16_t *bi, size_t j) {
    size_t na = (size_t)(ai[i + 1] - ai[i]), nb = (size_t)(bi[j + 1] - bi[j]);
    return na == nb && memcmp(a + ai[i], b + bi[j], na) == 0;
}

/* span k = [start, end) unless there is no run (end < 0) or no room; the new count */
static size_t push_run(int32_t *sp, size_t k, int32_t start, int32_t end) {
    if (end < 0 || k >= QAC_MAX_SPANS) return k;
    sp[2 * k] = start;
    sp[2 * k + 1] = end;
    return k + 1;
}

/* Damerau (optimal string alignment) of the typed prefix p against a beginning of
 * text t, over code points, in a band of SPAN_BAND edits: the code points of t
 * equal to the typed ones they align with, as runs; returns the number of spans. */
static size_t align_spans(const char *p, size_t np, const char *t, size_t nt, int32_t *sp) {
    enum { B = SPAN_BAND, W = 2 * SPAN_BAND + 1, INF = SPAN_BAND + 1 };
    if (np > SPAN_CHARS) return 0;
    uint16_t pi[SPAN_CHARS + 1], ti[SPAN_CHARS + 8];
    const size_t m = char_starts(p, np, SPAN_CHARS, pi);
    const size_t n = char_starts(t, nt, m + 4, ti); /* a beginning: up to 4 more */
    uint8_t d[SPAN_CHARS + 8][W];                   /* d[i][j - i + B] */
#define D(i, j) ((j) + B < (i) || (j) > (i) + B ? INF : d[i][(j) - (i) + B])
    for (size_t i = 0; i <= n; i++)
        for (size_t c = 0; c < W; c++) {
            const size_t j = i + c;
            if (j < B) { d[i][c] = INF; continue; }
            const size_t jj = j - B; /* the prefix column */
            if (jj > m) { d[i][c] = INF; continue; }
            int v;
            if (i == 0) v = (int)jj;
            else if (jj == 0) v = (int)i;
            else {
                v = D(i - 1, jj) + 1;
                const int ins = D(i, jj - 1) + 1;
                if (ins < v) v = ins;
                const int sub = D(i - 1, jj - 1) + !same_char(t, ti, i - 1, p, pi, jj - 1);
                if (sub < v) v = sub;
                if (i > 1 && jj > 1 && same_char(t, ti, i - 1, p, pi, jj - 2) &&
                    same_char(t, ti, i - 2, p, pi, jj - 1)) {
                    const int tr = D(i - 2, jj - 2) + 1;
                    if (tr < v) v = tr;
                }
            }
            d[i][c] = (uint8_t)(v < INF ? v : INF);
        }
    /* the end: the fewest edits, then the longest beginning of t */
    size_t end = 0;
    int best = INF;
    for (size_t i = 0; i <= n; i++)
        if (D(i, m) <= best) { best = D(i, m); end = i; }
    if (best >= INF) return 0;
    size_t k = 0, i = end, j = m;
    int32_t run_end = -1, run_start = -1;
    while (i > 0 && j > 0) {
        if (same_char(t, ti, i - 1, p, pi, j - 1) && D(i, j) == D(i - 1, j - 1)) {
            const int32_t at = (int32_t)(i - 1); /* kept: extend the run leftwards */
            if (run_start == at + 1) run_start = at;
            else {
                k = push_run(sp, k, run_start, run_end);
                run_start = at;
                run_end = at + 1;
            }
            i--, j--;
        } else if (i > 1 && j > 1 && same_char(t, ti, i - 1, p, pi, j - 2) &&
                   same_char(t, ti, i - 2, p, pi, j - 1) && D(i, j) == D(i - 2, j - 2) + 1) {
            i -= 2, j -= 2;
        } else if (D(i, j) == D(i - 1, j - 1) + 1) {
            i--, j--;
        } else if (D(i, j) == D(i - 1, j) + 1) {
            i--;
        } else {
            j--;
        }
    }
#undef D
    k = push_run(sp, k, run_start, run_end);
    /* the runs came right to left */
    for (size_t a = 0, b = k ? k - 1 : 0; a < b; a++, b--) {
        int32_t x0 = sp[2 * a], x1 = sp[2 * a + 1];
        sp[2 * a] = sp[2 * b], sp[2 * a + 1] = sp[2 * b + 1];
        sp[2 * b] = x0, sp[2 * b + 1] = x1;
    }
    return k;
}

/* one span per typed word over the start of its word, for the first run of
 * successive words of t that start with the typed words (tok, n_tok > 0) */
static size_t word_spans(const token_t *tok, size_t n_tok, const char *t, size_t n,
                         int32_t *sp) {
    for (size_t at = 0; at < n;) {
        while (at < n && t[at] == ' ') at++;
        if (at == n) break;
        size_t w = at, j = 0;
        for (; j < n_tok && w < n; j++) {
            if (!starts_with(t + w, n - w, tok[j].p, tok[j].n)) break;
            size_t e = w;
            while (e < n && t[e] != ' ') e++;
            w = e;
            while (w < n && t[w] == ' ') w++;
        }
        if (j == n_tok) {
            /* again, writing the spans */
            w = at;
            int32_t c = cps(t, at);
            for (j = 0; j < n_tok; j++) {
                sp[2 * j] = c;
                sp[2 * j + 1] = c + cps(tok[j].p, tok[j].n);
                size_t e = w;
                while (e < n && t[e] != ' ') e++;
                size_t next = e;
                while (next < n && t[next] == ' ') next++;
                c += cps(t + w, next - w);
                w = next;
            }
            return n_tok;
        }
        while (at < n && t[at] != ' ') at++;
    }
    return 0;
}

/* an answer's highlight spans (see qac_answer) */
static size_t answer_spans(const char *prefix, size_t plen, const char *t, size_t n,
                           int edits, int32_t *sp) {
    size_t pl = plen;
    while (pl && prefix[pl - 1] == ' ') pl--;
    if (!pl) return 0;
    if (starts_with(t, n, prefix, plen) || starts_with(t, n, prefix, pl)) {
        sp[0] = 0;
        sp[1] = cps(prefix, starts_with(t, n, prefix, plen) ? plen : pl);
        return 1;
    }
    if (edits > 0) return align_spans(prefix, pl, t, n, sp);
    token_t tok[MAX_TOKENS];
    const size_t n_tok = split_tokens(prefix, pl, tok);
    return n_tok ? word_spans(tok, n_tok, t, n, sp) : 0;
}

static int shown_source(uint32_t sources) {
    for (int i = 0; i < QAC_NSRC; i++)
        if (sources & (1u << shown_first[i])) return shown_first[i];
    return QAC_SRC_MODEL;
}

int qac_answer(const qac_answerer_t *a, qac_answer_scratch_t *s, const char *prefix,
               size_t prefix_len, const qac_context_view *ctx, const qac_extra_view *ex,
               size_t beam, size_t n_model, const qac_match_view *match,
               qac_answer_out *out) {
    if (!out) return QAC_E_INPUT;
    out->n = 0;
    out->text_len = 0;
    out->visited = 0;
    if (match && (match->typos < 0 || match->typos > QAC_FUZZY_MAX_EDITS ||
                  match->fuzzy > MAX_ROWS))
        return QAC_E_INPUT;
    if (!a || !s || !ctx || !ex || (prefix_len && !prefix)) return QAC_E_INPUT;
    if ((ctx->prev_len && !ctx->prev) ||
        ((ctx->session_len || ctx->n_session) && !ctx->session) ||
        (ctx->n_session && !ctx->session_time) || isnan(ctx->now) ||
        ((ctx->history_len || ctx->n_history) && !ctx->history) ||
        (ctx->n_history && (!ctx->history_count || !ctx->history_time)) ||
        ((ex->text_len || ex->n) && !ex->text) ||
        (ex->n && (!ex->source || !ex->count || !ex->popularity)) || ex->n_mpc > QAC_MAX_MPC ||
        (out->cap && (!out->ref || !out->source || !out->sources || !out->score)) ||
        (out->features && out->features_cap < out->cap * (size_t)QAC_NF) ||
        (out->text_cap && !out->text) || (out->spans && !out->n_spans) ||
        ex->n > (size_t)INT32_MAX / 4 || ctx->n_history > (size_t)INT32_MAX / 4 ||
        ctx->n_session > (size_t)INT32_MAX / 4)
        return QAC_E_INPUT;
    /* live */
    if (ctx->label_live && (ctx->n_label_live != a->n_labels || !isfinite(ctx->live_scale) ||
                            !(ctx->live_scale >= 0)))
        return QAC_E_INPUT;
    if (n_model > s->max_model || beam > s->max_beam || ctx->prev_len > s->max_prev ||
        (n_model && beam == 0))
        return QAC_E_CAPACITY;
    if (!prefix) prefix = "";
    int64_t lo = 0, hi = 0;
    qac_label_range(a, prefix, prefix_len, &lo, &hi);
    pool_t pool = {s, 0};
    size_t n_hm = 0;
    int rc = fill(a, &pool, prefix, prefix_len, ctx, ex, beam, n_model, lo, hi, &n_hm);
    const size_t n_own_hm = n_hm; /* the features count the prefix's own history only */
    if (rc == QAC_OK)
        rc = match_more(a, &pool, prefix, prefix_len, ctx, ex, match, out->cap, lo, hi, &n_hm,
                        &out->visited);
    if (rc == QAC_OK) {
        featurize_rows(a, &pool, prefix, prefix_len, ctx, n_own_hm, lo, hi);
        size_t n = pool.n, m;
        if (out->features) {
            /* every row, in pool order */
            m = n;
            if (n > out->cap) rc = QAC_E_CAPACITY;
        } else {
            /* the prefix's own answers, then word matches, then fewer edits first */
            for (size_t i = 0; i < n; i++) s->order[i].group = s->rows[s->order[i].row].group;
            qsort(s->order, n, sizeof *s->order, by_rank);
            if (out->collapse) n = collapse_variants(s, n, out->cap);
            m = n < out->cap ? n : out->cap;
        }
        size_t bytes = 0;
        for (size_t i = 0; rc == QAC_OK && i < m; i++) {
            const row_t *w = &s->rows[out->features ? i : (size_t)s->order[i].row];
            bytes += w->len + (i > 0);
        }
        if (rc == QAC_OK && out->text && bytes > out->text_cap) rc = QAC_E_CAPACITY;
        if (rc == QAC_OK) {
            size_t at = 0;
            for (size_t i = 0; i < m; i++) {
                const size_t r = out->features ? i : (size_t)s->order[i].row;
                const row_t *w = &s->rows[r];
                out->ref[i] = w->ref;
                out->sources[i] = w->sources;
                out->source[i] = shown_source(w->sources);
                if (out->edits) out->edits[i] = w->edits;
                if (out->spans)
                    out->n_spans[i] = (int32_t)answer_spans(
                        prefix, prefix_len, w->text, w->len, w->edits,
                        out->spans + (size_t)2 * QAC_MAX_SPANS * i);
                if (out->features) {
                    /* the scores are in row order until sorted: order[r] is row r's */
                    out->score[i] = s->order[r].score;
                    memcpy(out->features + r * QAC_NF, s->x + r * QAC_NF,
                           QAC_NF * sizeof *s->x);
                } else {
                    out->score[i] = s->order[i].score;
                }
                if (out->text) {
                    if (i) out->text[at++] = '\n';
                    memcpy(out->text + at, w->text, w->len);
                    at += w->len;
                }
            }
            out->text_len = at;
            out->n = m;
        }
    }
    clear_rows(&pool);
    return rc;
}

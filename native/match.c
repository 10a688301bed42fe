/* Matching what people actually type: range maxima and the typo search (see
 * qac_match.h). */
#include <stdlib.h>
#include <string.h>

#include "qac.h"
#include "qac_match.h"

/* ---- range maxima ------------------------------------------------------------ */

#define RMQ_BLOCK 32

static inline size_t better(const qac_rmq_t *r, size_t a, size_t b) {
    int64_t va = qac_rmq_value(r, a), vb = qac_rmq_value(r, b);
    return vb > va || (vb == va && b < a) ? b : a;
}

int qac_rmq_init(qac_rmq_t *r, const int64_t *pop, const int32_t *id, size_t n) {
    memset(r, 0, sizeof *r);
    r->pop = pop;
    r->id = id;
    r->n = n;
    if (n == 0) return QAC_OK;
    if (n > (size_t)INT32_MAX) return QAC_E_RANGE;
    size_t nb = (n + RMQ_BLOCK - 1) / RMQ_BLOCK;
    int levels = 1;
    while (((size_t)1 << levels) <= nb) levels++;
    r->n_blocks = nb;
    r->levels = levels;
    r->table = malloc((size_t)levels * nb * sizeof *r->table);
    if (!r->table) return QAC_E_NOMEM;
    for (size_t b = 0; b < nb; b++) {
        size_t best = b * RMQ_BLOCK, end = best + RMQ_BLOCK < n ? best + RMQ_BLOCK : n;
        for (size_t i = best + 1; i < end; i++) best = better(r, best, i);
        r->table[b] = (int32_t)best;
    }
    for (int l = 1; l < levels; l++) {
        const int32_t *prev = r->table + (size_t)(l - 1) * nb;
        int32_t *cur = r->table + (size_t)l * nb;
        size_t half = (size_t)1 << (l - 1);
        for (size_t b = 0; b < nb; b++)
            cur[b] = b + half < nb ? (int32_t)better(r, (size_t)prev[b], (size_t)prev[b + half])
                                   : prev[b];
    }
    return QAC_OK;
}

void qac_rmq_free(qac_rmq_t *r) {
    if (!r) return;
    free(r->table);
    r->table = NULL;
}

size_t qac_rmq_argmax(const qac_rmq_t *r, size_t lo, size_t hi) {
    size_t bl = (lo + RMQ_BLOCK - 1) / RMQ_BLOCK, bh = hi / RMQ_BLOCK; /* whole blocks */
    size_t best = lo;
    if (bl >= bh) {
        for (size_t i = lo + 1; i < hi; i++) best = better(r, best, i);
        return best;
    }
    for (size_t i = lo + 1; i < bl * RMQ_BLOCK; i++) best = better(r, best, i);
    for (size_t i = bh * RMQ_BLOCK; i < hi; i++) best = better(r, best, i);
    int l = 0;
    while (((size_t)2 << l) <= bh - bl) l++;
    const int32_t *t = r->table + (size_t)l * r->n_blocks;
    best = better(r, best, (size_t)t[bl]);
    best = better(r, best, (size_t)t[bh - ((size_t)1 << l)]);
    return best;
}

/* ---- the typo search ---------------------------------------------------------- */

static inline size_t lab_len(const qac_fuzzy_t *z, size_t i) {
    return (size_t)(z->offsets[i + 1] - 1 - z->offsets[i]);
}

static inline unsigned char lab_byte(const qac_fuzzy_t *z, size_t i, size_t at) {
    return (unsigned char)z->text[z->offsets[i] + (int64_t)at];
}

static inline uint8_t min3(uint8_t a, uint8_t b, uint8_t c) {
    uint8_t m = a < b ? a : b;
    return m < c ? m : c;
}

static void walk(qac_fuzzy_t *z, size_t lo, size_t hi, size_t depth);

/* the child of depth d - 1 reached with byte c: its row, then its range or its
 * children */
static void visit(qac_fuzzy_t *z, size_t lo, size_t hi, size_t d, unsigned char c) {
    if (z->visited >= z->max_visits) {
        z->truncated = 1;
        return;
    }
    z->visited++;
    const size_t m = z->m, w = m + 1;
    const uint8_t *q = z->dp + (d - 1) * w, *qq = d >= 2 ? z->dp + (d - 2) * w : NULL;
    uint8_t *row = z->dp + d * w;
    z->chars[d] = c;
    row[0] = (uint8_t)(d < 255 ? d : 255);
    uint8_t low = row[0];
    for (size_t j = 1; j <= m; j++) {
        uint8_t v = min3((uint8_t)(q[j] + 1), (uint8_t)(row[j - 1] + 1),
                         (uint8_t)(q[j - 1] + (c != z->p[j - 1])));
        if (qq && j >= 2 && c == z->p[j - 2] && z->chars[d - 1] == z->p[j - 1] &&
            qq[j - 2] + 1 < v)
            v = (uint8_t)(qq[j - 2] + 1);
        row[j] = v;
        if (v < low) low = v;
    }
    if (low > z->max_edits) return;
    const int end = row[m];
    if (end <= z->max_edits) {
        if (end == 0) return; /* the exact prefix: not a correction */
        if (z->n_ranges < z->cap)
            z->ranges[z->n_ranges++] = (qac_fuzzy_range){lo, hi, end};
        else
            z->truncated = 1;
        if (low >= end) return; /* nothing deeper is closer */
    }
    if (d < m + (size_t)z->max_edits) walk(z, lo, hi, d);
}

/* the children of the node of depth `depth` over labels [lo, hi) */
static void walk(qac_fuzzy_t *z, size_t lo, size_t hi, size_t depth) {
    size_t i = lo;
    while (i < hi && lab_len(z, i) == depth) i++; /* labels that end here sort first */
    while (i < hi && !z->truncated) {
        const unsigned char c = lab_byte(z, i, depth);
        /* the first label past byte c at this depth: galloping from i (children are
         * mostly small, so this costs the log of the child's size, not the node's),
         * then bisection */
        size_t a = i + 1, b = hi, step = 1;
        while (a < b) {
            size_t probe = a + step - 1;
            if (probe >= b) break;
            if (lab_byte(z, probe, depth) > c) {
                b = probe;
                break;
            }
            a = probe + 1;
            step *= 2;
        }
        while (a < b) {
            size_t mid = a + (b - a) / 2;
            if (lab_byte(z, mid, depth) <= c) a = mid + 1; else b = mid;
        }
        if (!(depth == 0 && z->fix_first && c != z->p[0])) visit(z, i, a, depth + 1, c);
        i = a;
    }
}

void qac_fuzzy_search(qac_fuzzy_t *z) {
    z->n_ranges = 0;
    z->visited = 0;
    z->truncated = 0;
    if (z->m == 0 || z->m > QAC_FUZZY_MAX_BYTES || z->max_edits < 1 ||
        z->max_edits > QAC_FUZZY_MAX_EDITS || z->n == 0)
        return;
    for (size_t j = 0; j <= z->m; j++) z->dp[j] = (uint8_t)j;
    walk(z, 0, z->n, 0);
}

int qac_prefix_edits(const unsigned char *t, size_t n, const unsigned char *p, size_t m,
                     int max_edits, int fix_first) {
    if (m == 0) return 0;
    if (m > QAC_FUZZY_MAX_BYTES || max_edits > QAC_FUZZY_MAX_EDITS) return max_edits + 1;
    if (fix_first && (n == 0 || t[0] != p[0])) return max_edits + 1;
    uint8_t rows[3][QAC_FUZZY_MAX_BYTES + 1];
    for (size_t j = 0; j <= m; j++) rows[0][j] = (uint8_t)j;
    int best = rows[0][m];
    size_t limit = m + (size_t)max_edits < n ? m + (size_t)max_edits : n;
    for (size_t d = 1; d <= limit; d++) {
        uint8_t *row = rows[d % 3];
        const uint8_t *q = rows[(d - 1) % 3], *qq = rows[(d + 1) % 3];
        const unsigned char c = t[d - 1];
        row[0] = (uint8_t)d;
        uint8_t low = row[0];
        for (size_t j = 1; j <= m; j++) {
            uint8_t v = min3((uint8_t)(q[j] + 1), (uint8_t)(row[j - 1] + 1),
                             (uint8_t)(q[j - 1] + (c != p[j - 1])));
            if (d >= 2 && j >= 2 && c == p[j - 2] && t[d - 2] == p[j - 1] && qq[j - 2] + 1 < v)
                v = (uint8_t)(qq[j - 2] + 1);
            row[j] = v;
            if (v < low) low = v;
        }
        if (row[m] < best) best = row[m];
        if (low > max_edits || low >= best) break;
    }
    return best <= max_edits ? best : max_edits + 1;
}

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

/* ---- the labels' child table ------------------------------------------------- */

int qac_lcp_build(const char *text, const int64_t *offsets, size_t n, int32_t *out) {
    if (n >= (size_t)INT32_MAX) return QAC_E_RANGE;
    int32_t *stack = malloc((n + 1) * sizeof *stack);
    if (!stack) return QAC_E_NOMEM;
    memset(out, 0, 4 * (n + 1) * sizeof *out);
    int32_t *lcp = out, *up = out + (n + 1), *down = out + 2 * (n + 1), *next = out + 3 * (n + 1);
    lcp[0] = lcp[n] = -1;
    for (size_t i = 1; i < n; i++) {
        const char *a = text + offsets[i - 1], *b = text + offsets[i];
        const int64_t la = offsets[i] - 1 - offsets[i - 1], lb = offsets[i + 1] - 1 - offsets[i];
        const int64_t m = la < lb ? la : lb;
        int64_t c = 0;
        while (c < m && c < INT32_MAX && a[c] == b[c]) c++;
        lcp[i] = (int32_t)c;
    }
    /* up and down, then next, as the paper builds them: one pass each, a stack */
    size_t sp = 0;
    int64_t last = -1;
    stack[sp++] = 0;
    for (size_t i = 1; i <= n; i++) {
        while (lcp[i] < lcp[stack[sp - 1]]) {
            last = stack[--sp];
            const int32_t top = stack[sp - 1];
            if (lcp[i] <= lcp[top] && lcp[top] != lcp[last]) down[top] = (int32_t)last;
        }
        if (last != -1) {
            up[i] = (int32_t)last;
            last = -1;
        }
        stack[sp++] = (int32_t)i;
    }
    sp = 0;
    stack[sp++] = 0;
    for (size_t i = 1; i <= n; i++) {
        while (lcp[i] < lcp[stack[sp - 1]]) sp--;
        if (lcp[i] == lcp[stack[sp - 1]]) next[stack[--sp]] = (int32_t)i;
        stack[sp++] = (int32_t)i;
    }
    free(stack);
    return QAC_OK;
}

qac_lcp_t qac_lcp_view(const int32_t *table, size_t n) {
    return (qac_lcp_t){n, table, table + (n + 1), table + 2 * (n + 1), table + 3 * (n + 1)};
}

/* ---- the typo search ---------------------------------------------------------- */

uint32_t qac_utf8_at(const unsigned char *t, size_t n, size_t *len) {
    const unsigned char b = t[0];
    size_t k = b < 0x80 ? 1 : b >= 0xC2 && b <= 0xDF ? 2 : b >= 0xE0 && b <= 0xEF ? 3
             : b >= 0xF0 && b <= 0xF4 ? 4 : 0;
    uint32_t c = k == 1 ? b : k == 2 ? b & 0x1Fu : k == 3 ? b & 0x0Fu : b & 0x07u;
    for (size_t i = 1; i < k; i++) {
        if (i >= n || (t[i] & 0xC0) != 0x80) { k = 0; break; }
        c = c << 6 | (t[i] & 0x3Fu);
    }
    /* overlong, surrogate or out of range: not well formed */
    if (k == 0 || (k == 3 && (c < 0x800 || (c >= 0xD800 && c <= 0xDFFF))) ||
        (k == 4 && (c < 0x10000 || c > 0x10FFFF))) {
        *len = 1;
        return 0x110000u + b;
    }
    *len = k;
    return c;
}

/* the code points of t[0, n), at most cap; returns how many, or cap + 1 if more */
static size_t decode(const unsigned char *t, size_t n, uint32_t *out, size_t cap) {
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        if (k == cap) return cap + 1;
        size_t len;
        out[k++] = qac_utf8_at(t + i, n - i, &len);
        i += len;
    }
    return k;
}

static inline size_t lab_len(const qac_fuzzy_t *z, size_t i) {
    return (size_t)(z->offsets[i + 1] - 1 - z->offsets[i]);
}

static inline const unsigned char *lab_at(const qac_fuzzy_t *z, size_t i, size_t at) {
    return (const unsigned char *)z->text + z->offsets[i] + (int64_t)at;
}

/* whether label i's bytes from `at` sort at or before the code point c (k bytes):
 * over a run of labels sorted bytewise, true then false */
static inline int at_or_before(const qac_fuzzy_t *z, size_t i, size_t at,
                               const unsigned char *c, size_t k) {
    const size_t avail = lab_len(z, i) - at, n = avail < k ? avail : k;
    const unsigned char *l = lab_at(z, i, at);
    /* memcmp(l, c, n) <= 0 over the one to four bytes of a code point, without the
     * call (the typo search's bisections make many) */
    for (size_t j = 0; j < n; j++)
        if (l[j] != c[j]) return l[j] < c[j];
    return 1; /* equal, or a shorter label: before */
}

static inline uint8_t min3(uint8_t a, uint8_t b, uint8_t c) {
    uint8_t m = a < b ? a : b;
    return m < c ? m : c;
}

static void walk(qac_fuzzy_t *z, size_t lo, size_t hi, size_t d, size_t depth);

/* the child of (code point) depth d - 1 reached with code point c, whose labels
 * [lo, hi) go on at byte `depth`: its row, then its range or its children */
static void visit(qac_fuzzy_t *z, size_t lo, size_t hi, size_t d, uint32_t c, size_t depth) {
    if (z->visited >= z->max_visits) {
        z->truncated = 1;
        return;
    }
    z->visited++;
    const size_t m = z->mc, w = m + 1, k = (size_t)z->max_edits;
    const uint32_t *p = z->pc;
    const uint8_t *q = z->dp + (d - 1) * w, *qq = d >= 2 ? z->dp + (d - 2) * w : NULL;
    uint8_t *row = z->dp + d * w;
    z->chars[d] = c;
    /* Only the band |j - d| <= k can be within k edits (Ukkonen): the cells outside
     * it are never computed, and read as k + 1 where the next rows touch them (the
     * band's two neighbours); every cell holds min(k + 1, its distance). */
    const uint8_t over = (uint8_t)(k + 1);
    const size_t jlo = d > k ? d - k : 1, jhi = d + k < m ? d + k : m;
    row[0] = d < over ? (uint8_t)d : over;
    if (jlo > 1) row[jlo - 1] = over;
    uint8_t low = row[0];
    for (size_t j = jlo; j <= jhi; j++) {
        uint8_t v = min3((uint8_t)(q[j] + 1), (uint8_t)(row[j - 1] + 1),
                         (uint8_t)(q[j - 1] + (c != p[j - 1])));
        if (qq && j >= 2 && c == p[j - 2] && z->chars[d - 1] == p[j - 1] &&
            qq[j - 2] + 1 < v)
            v = (uint8_t)(qq[j - 2] + 1);
        if (v > over) v = over;
        row[j] = v;
        if (v < low) low = v;
    }
    if (jhi < m) row[jhi + 1] = over;
    if (low > z->max_edits) return;
    const int end = jhi == m ? row[m] : over;
    if (end <= z->max_edits) {
        if (end == 0) return; /* the exact prefix: not a correction */
        if (z->n_ranges < z->cap)
            z->ranges[z->n_ranges++] = (qac_fuzzy_range){lo, hi, end};
        else
            z->truncated = 1;
        if (low >= end) return; /* nothing deeper is closer */
    }
    if (d < m + (size_t)z->max_edits) walk(z, lo, hi, d, depth);
}

/* the child of the node of depth d reached with code point c, if the first code
 * point may be that one */
static inline void child(qac_fuzzy_t *z, size_t lo, size_t hi, size_t d, uint32_t c,
                         size_t depth) {
    if (!(d == 0 && z->fix_first && c != z->pc[0])) visit(z, lo, hi, d + 1, c, depth);
}

/* the children of the node of depth d (code points; `depth` bytes) over labels
 * [lo, hi), found by bisection: one per next code point */
static void bisect(qac_fuzzy_t *z, size_t lo, size_t hi, size_t d, size_t depth) {
    size_t i = lo;
    while (i < hi && lab_len(z, i) == depth) i++; /* labels that end here sort first */
    while (i < hi && !z->truncated) {
        size_t k;
        const unsigned char *cb = lab_at(z, i, depth);
        const uint32_t c = qac_utf8_at(cb, lab_len(z, i) - depth, &k);
        /* the first label past code point c at this depth: galloping from i (children
         * are mostly small, so this costs the log of the child's size, not the
         * node's), then bisection */
        size_t a = i + 1, b = hi, step = 1;
        while (a < b) {
            size_t probe = a + step - 1;
            if (probe >= b) break;
            if (!at_or_before(z, probe, depth, cb, k)) {
                b = probe;
                break;
            }
            a = probe + 1;
            step *= 2;
        }
        while (a < b) {
            size_t mid = a + (b - a) / 2;
            if (at_or_before(z, mid, depth, cb, k)) a = mid + 1; else b = mid;
        }
        child(z, i, a, d, c, depth + k);
        i = a;
    }
}

/* the labels [lo, hi) of the node of depth d that share the byte at `depth`: one
 * child, unless one of them ends here or a letter of several bytes starts with that
 * byte (then bisection splits them) */
static void byte_child(qac_fuzzy_t *z, size_t lo, size_t hi, size_t d, size_t depth) {
    const size_t len = lab_len(z, lo);
    size_t k = 0;
    const uint32_t c = len > depth ? qac_utf8_at(lab_at(z, lo, depth), len - depth, &k) : 0;
    if (k == 1 || (k > 1 && hi - lo == 1)) child(z, lo, hi, d, c, depth + k);
    else bisect(z, lo, hi, d, depth);
}

/* the children of the node of depth d (code points; `depth` bytes) over labels
 * [lo, hi): one per next code point, read off the child table (see qac_lcp_t)
 * where there is one */
static void walk(qac_fuzzy_t *z, size_t lo, size_t hi, size_t d, size_t depth) {
    const qac_lcp_t *t = z->tree;
    if (!t || hi - lo < 2) {
        bisect(z, lo, hi, d, depth);
        return;
    }
    /* [lo, hi - 1] is an lcp-interval (its labels share `depth` bytes, its
     * neighbours fewer: the answerer checked the labels strictly sorted, and a
     * node's range holds every label that starts with its text), so its first
     * l-index, l the bytes all of them share, is in (lo, hi - 1] */
    const size_t j = hi - 1, up = (size_t)t->up[j + 1];
    const size_t first = up > lo && up <= j ? up : (size_t)t->down[lo];
    if ((size_t)t->lcp[first] > depth) { /* one byte, shared by all */
        size_t k;
        const uint32_t c = qac_utf8_at(lab_at(z, lo, depth), lab_len(z, lo) - depth, &k);
        if (depth + k <= (size_t)t->lcp[first]) child(z, lo, hi, d, c, depth + k);
        else bisect(z, lo, hi, d, depth);
        return;
    }
    /* the byte children, split at the l-indices */
    size_t s = lo, e = first;
    while (!z->truncated) {
        byte_child(z, s, e, d, depth);
        if (e == hi) return;
        const size_t next = (size_t)t->next[e];
        s = e;
        e = next > s && next <= j ? next : hi;
    }
}

void qac_fuzzy_search(qac_fuzzy_t *z) {
    z->n_ranges = 0;
    z->visited = 0;
    z->truncated = 0;
    z->mc = 0;
    if (z->m == 0 || z->m > QAC_FUZZY_MAX_BYTES || z->max_edits < 1 ||
        z->max_edits > QAC_FUZZY_MAX_EDITS || z->n == 0)
        return;
    z->mc = decode(z->p, z->m, z->pc, QAC_FUZZY_MAX_CHARS);
    if (z->mc > QAC_FUZZY_MAX_CHARS) {
        z->mc = 0;
        return;
    }
    for (size_t j = 0; j <= z->mc; j++) z->dp[j] = (uint8_t)j;
    walk(z, 0, z->n, 0, 0);
}

int qac_prefix_edits(const unsigned char *t, size_t n, const unsigned char *p, size_t m,
                     int max_edits, int fix_first) {
    if (m == 0) return 0;
    if (m > QAC_FUZZY_MAX_BYTES || max_edits > QAC_FUZZY_MAX_EDITS) return max_edits + 1;
    uint32_t pc[QAC_FUZZY_MAX_CHARS], tc[QAC_FUZZY_MAX_CHARS + QAC_FUZZY_MAX_EDITS];
    const size_t mc = decode(p, m, pc, QAC_FUZZY_MAX_CHARS);
    if (mc > QAC_FUZZY_MAX_CHARS) return max_edits + 1;
    const size_t cap = mc + (size_t)max_edits;
    size_t nc = decode(t, n, tc, cap);
    if (nc > cap) nc = cap; /* a beginning: the first cap code points are enough */
    if (fix_first && (nc == 0 || tc[0] != pc[0])) return max_edits + 1;
    uint8_t rows[3][QAC_FUZZY_MAX_CHARS + 1];
    for (size_t j = 0; j <= mc; j++) rows[0][j] = (uint8_t)j;
    int best = rows[0][mc];
    for (size_t d = 1; d <= nc; d++) {
        uint8_t *row = rows[d % 3];
        const uint8_t *q = rows[(d - 1) % 3], *qq = rows[(d + 1) % 3];
        const uint32_t c = tc[d - 1];
        row[0] = (uint8_t)d;
        uint8_t low = row[0];
        for (size_t j = 1; j <= mc; j++) {
            uint8_t v = min3((uint8_t)(q[j] + 1), (uint8_t)(row[j - 1] + 1),
                             (uint8_t)(q[j - 1] + (c != pc[j - 1])));
            if (d >= 2 && j >= 2 && c == pc[j - 2] && tc[d - 2] == pc[j - 1] &&
                qq[j - 2] + 1 < v)
                v = (uint8_t)(qq[j - 2] + 1);
            row[j] = v;
            if (v < low) low = v;
        }
        if (row[mc] < best) best = row[mc];
        if (low > max_edits || low >= best) break;
    }
    return best <= max_edits ? best : max_edits + 1;
}

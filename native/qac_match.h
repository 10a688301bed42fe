/* qac native kernel: matching what people actually type, for the answerer.
 *
 * Internal to the kernel (no cffi block): the answerer (answer.c) uses these to
 * find candidates beyond the labels that start with the typed prefix:
 *
 *   - range maxima: the most popular entries of any range of a sorted array, in
 *     popularity order, without scanning the range (blocks of 32 plus a sparse
 *     table over the blocks' maxima);
 *   - the typo search: the ranges of sorted labels whose first bytes are within a
 *     few edits (Damerau: a swap of neighbours is one) of the prefix, found by
 *     walking the trie the sorted labels imply, carrying one row of the
 *     edit-distance table per depth and pruning a branch once every cell of its
 *     row is over the limit. A node's children are sub-ranges read off the labels'
 *     child table (the longest common prefixes of neighbours and the lcp-interval
 *     tree over them, Abouelhoda, Kurtz & Ohlebusch 2004: one step and one label
 *     read per child), or found by bisection over the labels where a letter of
 *     several bytes splits a byte's child (or no table is given);
 *   - the distance of one text's best prefix to the typed prefix (the user's past
 *     queries).
 *
 * Distances are over UTF-8 bytes: a changed ASCII letter is one edit; the typed
 * text is folded (accents, quotes, dashes) before it gets here.
 */
#ifndef QAC_MATCH_H
#define QAC_MATCH_H

#include <stddef.h>
#include <stdint.h>

#define QAC_FUZZY_MAX_CHARS 64 /* longer prefixes (code points) are not corrected */
#define QAC_FUZZY_MAX_BYTES (4 * QAC_FUZZY_MAX_CHARS)
#define QAC_FUZZY_MAX_EDITS 2

/* The most popular entry of [lo, hi) of an array whose entry i has popularity
 * pop[id ? id[i] : i]; ties go to the lower position. */
typedef struct {
    const int64_t *pop;
    const int32_t *id;
    size_t n, n_blocks;
    int levels;
    int32_t *table; /* levels * n_blocks: argmax over blocks [b, b + 2^level) */
} qac_rmq_t;

int qac_rmq_init(qac_rmq_t *r, const int64_t *pop, const int32_t *id, size_t n);
void qac_rmq_free(qac_rmq_t *r);
size_t qac_rmq_argmax(const qac_rmq_t *r, size_t lo, size_t hi); /* lo < hi <= n */

static inline int64_t qac_rmq_value(const qac_rmq_t *r, size_t i) {
    return r->pop[r->id ? (size_t)r->id[i] : i];
}

/* The child table of sorted labels: lcp[i] is the bytes labels i - 1 and i have in
 * common (lcp[0] = lcp[n] = -1), and up, down and next (0: none) are the
 * lcp-interval tree's links (Abouelhoda, Kurtz & Ohlebusch 2004, the child table):
 * the children of the labels [i, j] that share l bytes and no more start at the
 * l-indices, up[j + 1] if it lies in (i, j] else down[i], then next of each. 16 bytes
 * per label, built with the labels (qac_child_table) and saved in the model, so the
 * workers share one copy; this is a view of those 4 * (n + 1) int32. */
typedef struct {
    size_t n;
    const int32_t *lcp, *up, *down, *next; /* n + 1 each */
} qac_lcp_t;

/* Writes the child table of the n sorted labels into out[4 * (n + 1)]: lcp, up, down,
 * next. The labels are not checked here (see qac_child_table). */
int qac_lcp_build(const char *text, const int64_t *offsets, size_t n, int32_t *out);
qac_lcp_t qac_lcp_view(const int32_t *table, size_t n);

/* A range of sorted labels whose beginnings are `cost` edits from the prefix. */
typedef struct {
    size_t lo, hi;
    int cost;
} qac_fuzzy_range;

/* What the typo search works with: the sorted labels (text, offsets as in
 * qac_labels_view, and their child table, or NULL to bisect), the prefix p (m bytes
 * of UTF-8, at most QAC_FUZZY_MAX_CHARS code points), the most edits, whether its
 * first code point may change, room for the ranges found, and a limit on the trie
 * nodes visited (the work of one keystroke is bounded; `truncated` says it was hit).
 * Edits count code points: a letter of two or three bytes changed, dropped, doubled
 * or swapped is one edit. */
typedef struct {
    const char *text;
    const int64_t *offsets;
    size_t n;
    const qac_lcp_t *tree;
    const unsigned char *p;
    size_t m;
    int max_edits, fix_first;
    qac_fuzzy_range *ranges;
    size_t cap, n_ranges;
    size_t visited, max_visits;
    int truncated;
    /* the search's own: the prefix's code points, one edit-table row per depth (in
     * code points) of the trie walk and the code point taken at each */
    size_t mc;
    uint32_t pc[QAC_FUZZY_MAX_CHARS];
    uint8_t dp[(QAC_FUZZY_MAX_CHARS + QAC_FUZZY_MAX_EDITS + 1) * (QAC_FUZZY_MAX_CHARS + 1)];
    uint32_t chars[QAC_FUZZY_MAX_CHARS + QAC_FUZZY_MAX_EDITS + 1];
} qac_fuzzy_t;

/* Fill z->ranges (cost >= 1; the exact prefix's range is not one of them). */
void qac_fuzzy_search(qac_fuzzy_t *z);

/* The fewest edits (code points) between p and a beginning of t (p's first code
 * point kept when fix_first), or max_edits + 1 when more. */
int qac_prefix_edits(const unsigned char *t, size_t n, const unsigned char *p, size_t m,
                     int max_edits, int fix_first);

/* The code point at t[0, n) (n >= 1) and its length in bytes; a byte that does
 * not start a well-formed sequence stands for itself (0x110000 + the byte, one
 * byte). */
uint32_t qac_utf8_at(const unsigned char *t, size_t n, size_t *len);

#endif

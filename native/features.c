/* TF-IDF featurization: n-gram extraction, hashing and per-row transform.
 *
 * The spec (tokens, n-grams, keys, weights) is the docstring of
 * qac/features/__init__.py; the ABI and the scratch contract are in
 * qac_features.h. Extraction streams n-grams straight into a sink: their
 * keys (fitting) or their known feature ids and tf weights (transform), so
 * no n-gram text is ever materialized and no call allocates.
 */
#include "qac.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define FNV_OFFSET 14695981039346656037ULL
#define FNV_PRIME 1099511628211ULL
#define MAX_THREADS 64

/* Keys are FNV-1a 64 times MIX (odd: a bijection of uint64), which spreads the
 * hash over the top bits the directory reads. */
#define MIX 0x9E3779B97F4A7C15ULL

struct qac_featurizer {
    size_t n_blocks;
    qac_block_spec_t blocks[QAC_FEAT_MAX_BLOCKS];
    int64_t begin[QAC_FEAT_MAX_BLOCKS + 1]; /* feature-id range of each block */
    size_t n_features;
    /* The caller's arrays, read in place (they may be read-only mmaps shared by
     * many processes): keys[n_features] ascending within each block, idf, and
     * per block b a directory dir[dir_at[b] .. dir_at[b] + (1 << bits[b])]:
     * the keys of block b whose top bits[b] bits are i are its ids
     * begin[b] + dir[..+i] .. begin[b] + dir[..+i+1]. */
    const uint64_t *keys;
    const float *idf;
    const uint32_t *dir;
    size_t dir_at[QAC_FEAT_MAX_BLOCKS];
    int bits[QAC_FEAT_MAX_BLOCKS];
    float *posw[QAC_FEAT_MAX_BLOCKS];    /* prefix_char: (p+1)^-decay, p = 0..MAX_CODEPOINTS */
};

/* ------------------------------------------------------------------ text */

/* ASCII separators: the six ASCII whitespace characters and string.punctuation. */
static const unsigned char SEP[128] = {
    ['\t'] = 1, ['\n'] = 1, ['\v'] = 1, ['\f'] = 1, ['\r'] = 1, [' '] = 1,
    ['!'] = 1, ['"'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1,
    ['('] = 1, [')'] = 1, ['*'] = 1, ['+'] = 1, [','] = 1, ['-'] = 1, ['.'] = 1,
    ['/'] = 1, [':'] = 1, [';'] = 1, ['<'] = 1, ['='] = 1, ['>'] = 1, ['?'] = 1,
    ['@'] = 1, ['['] = 1, ['\\'] = 1, [']'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1,
    ['{'] = 1, ['|'] = 1, ['}'] = 1, ['~'] = 1,
};

static inline int is_sep(unsigned char c) { return c < 0x80 && SEP[c]; }

/* Byte length of the code point starting with lead byte c (input already validated). */
static inline size_t cp_len(unsigned char c) {
    return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}

/* Strict UTF-8 check (no overlongs, surrogates or > U+10FFFF); counts code points. */
static int utf8_check(const unsigned char *s, size_t n, size_t *ncp) {
    size_t i = 0, cps = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
        } else {
            size_t len;
            unsigned char lo = 0x80, hi = 0xBF;
            if (c >= 0xC2 && c <= 0xDF) {
                len = 2;
            } else if (c >= 0xE0 && c <= 0xEF) {
                len = 3;
                if (c == 0xE0) lo = 0xA0;
                if (c == 0xED) hi = 0x9F;
            } else if (c >= 0xF0 && c <= 0xF4) {
                len = 4;
                if (c == 0xF0) lo = 0x90;
                if (c == 0xF4) hi = 0x8F;
            } else {
                return QAC_E_UTF8;
            }
            if (n - i < len) return QAC_E_UTF8;
            if (s[i + 1] < lo || s[i + 1] > hi) return QAC_E_UTF8;
            for (size_t k = 2; k < len; k++)
                if (s[i + k] < 0x80 || s[i + k] > 0xBF) return QAC_E_UTF8;
            i += len;
        }
        cps++;
    }
    *ncp = cps;
    return QAC_OK;
}

static int check_field(const char *s, size_t n) {
    if (n == 0) return QAC_OK;
    if (s == NULL) return QAC_E_INPUT;
    if (n > 4 * (size_t)QAC_FEAT_MAX_CODEPOINTS) return QAC_E_INPUT;
    size_t cps = 0;
    int rc = utf8_check((const unsigned char *)s, n, &cps);
    if (rc) return rc;
    return cps > QAC_FEAT_MAX_CODEPOINTS ? QAC_E_INPUT : QAC_OK;
}

/* Next token at or after *pos: [*ts, *te). Returns 0 when there is none. */
static inline int next_token(const unsigned char *s, size_t n, size_t *pos, size_t *ts,
                             size_t *te) {
    size_t i = *pos;
    while (i < n && is_sep(s[i])) i++;
    if (i >= n) {
        *pos = n;
        return 0;
    }
    *ts = i;
    while (i < n && !is_sep(s[i])) i++;
    *te = i;
    *pos = i;
    return 1;
}

static inline uint64_t fnv_bytes(uint64_t h, const unsigned char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= FNV_PRIME;
    }
    return h;
}

static inline uint64_t fnv_byte(uint64_t h, unsigned char c) {
    h ^= c;
    return h * FNV_PRIME;
}

/* ------------------------------------------------------------------ sinks */

typedef struct {
    const qac_featurizer_t *f; /* NULL: collect keys */
    size_t block;              /* the block whose vocabulary is searched */
    int32_t *idx;
    float *val;
    uint64_t *keys;
    size_t n, cap;
    int overflow;
} sink_t;

/* The directory's bits for a block of n keys: the smallest b with 2^(b+1) >= n,
 * so a bucket holds between 1 and 2 keys on average (at most 2^31 buckets). */
static int dir_bits(size_t n) {
    int b = 0;
    while (b < 31 && ((size_t)2 << b) < n) b++;
    return b;
}

static inline size_t bucket_of(uint64_t key, int bits) {
    return bits ? (size_t)(key >> (64 - bits)) : 0;
}

/* The id of `key` in block b, or -1. */
static inline int32_t table_find(const qac_featurizer_t *f, size_t b, uint64_t key) {
    const uint32_t *d = f->dir + f->dir_at[b] + bucket_of(key, f->bits[b]);
    const uint64_t *k = f->keys + f->begin[b];
    for (uint32_t i = d[0], end = d[1]; i < end; i++) {
        if (k[i] == key) return (int32_t)(f->begin[b] + i);
        if (k[i] > key) break;
    }
    return -1;
}

static inline void sink_put(sink_t *s, uint64_t key, float w) {
    key *= MIX;
    if (s->f) {
        int32_t id = table_find(s->f, s->block, key);
        if (id < 0) return;
        if (s->n >= s->cap) {
            s->overflow = 1;
            return;
        }
        s->idx[s->n] = id;
        s->val[s->n] = w;
        s->n++;
    } else {
        if (s->n >= s->cap) {
            s->overflow = 1;
            return;
        }
        s->keys[s->n++] = key;
    }
}

/* ------------------------------------------------------------- extraction */

/* Char n-grams of one token (bytes tok[0:tlen]) plus an optional '#' mark. */
static void token_chars(const unsigned char *tok, size_t tlen, int mark, int nmin, int nmax,
                        uint64_t h0, const float *posw, sink_t *sink) {
    size_t L = (size_t)mark;
    for (size_t i = 0; i < tlen; i++) L += (tok[i] & 0xC0) != 0x80;
    if (L < (size_t)nmin) { /* shorter than the smallest n: the whole padded token, once */
        uint64_t h = fnv_bytes(h0, tok, tlen);
        if (mark) h = fnv_byte(h, '#');
        sink_put(sink, h, 1.0f);
        return;
    }
    size_t bp = 0;
    for (size_t p = 0; p + (size_t)nmin <= L; p++) {
        float w = posw ? posw[p] : 1.0f;
        uint64_t h = h0;
        size_t q = bp;
        for (size_t k = 1; k <= (size_t)nmax && p + k <= L; k++) {
            if (q < tlen) {
                size_t cl = cp_len(tok[q]);
                h = fnv_bytes(h, tok + q, cl);
                q += cl;
            } else {
                h = fnv_byte(h, '#');
            }
            if (k >= (size_t)nmin) sink_put(sink, h, w);
        }
        if (bp < tlen) bp += cp_len(tok[bp]);
    }
}

/* All n-grams of one block over one field's text. */
static void block_extract(const qac_block_spec_t *b, int32_t block_index, const float *posw,
                          const unsigned char *s, size_t n, sink_t *sink) {
    uint64_t h0 = fnv_byte(FNV_OFFSET, (unsigned char)block_index);
    size_t pos = 0, ts, te;
    if (b->kind == QAC_FEAT_WORD) {
        size_t rs[QAC_FEAT_MAX_N], re[QAC_FEAT_MAX_N];
        size_t j = 0;
        const size_t R = QAC_FEAT_MAX_N;
        while (next_token(s, n, &pos, &ts, &te)) {
            rs[j % R] = ts;
            re[j % R] = te;
            for (size_t m = (size_t)b->ngram_min; m <= (size_t)b->ngram_max && m <= j + 1; m++) {
                uint64_t h = h0;
                for (size_t t = j + 1 - m; t <= j; t++) {
                    if (t != j + 1 - m) h = fnv_byte(h, ' ');
                    h = fnv_bytes(h, s + rs[t % R], re[t % R] - rs[t % R]);
                }
                sink_put(sink, h, 1.0f);
            }
            j++;
        }
        return;
    }
    while (next_token(s, n, &pos, &ts, &te)) {
        int mark = !(b->open_end && te == n);
        token_chars(s + ts, te - ts, mark, b->ngram_min, b->ngram_max, h0,
                    b->kind == QAC_FEAT_PREFIX_CHAR ? posw : NULL, sink);
    }
}

/* Entries one block may emit for a field of `len` bytes (any accepted text). */
static size_t block_bound(const qac_block_spec_t *b, size_t len) {
    size_t l = len < QAC_FEAT_MAX_CODEPOINTS ? len : QAC_FEAT_MAX_CODEPOINTS;
    size_t nr = (size_t)(b->ngram_max - b->ngram_min + 1);
    /* tokens <= (l+1)/2 <= l; char: padded lengths sum to <= 2l, each n <= that many */
    return (b->kind == QAC_FEAT_WORD ? l : 2 * l) * nr;
}

/* ---------------------------------------------------------------- sorting */

static void insertion_pairs(int32_t *idx, float *val, size_t n) {
    for (size_t i = 1; i < n; i++) {
        int32_t k = idx[i];
        float v = val[i];
        size_t j = i;
        while (j > 0 && idx[j - 1] > k) {
            idx[j] = idx[j - 1];
            val[j] = val[j - 1];
            j--;
        }
        idx[j] = k;
        val[j] = v;
    }
}

static inline void swap_pair(int32_t *idx, float *val, size_t a, size_t b) {
    int32_t ti = idx[a];
    idx[a] = idx[b];
    idx[b] = ti;
    float tv = val[a];
    val[a] = val[b];
    val[b] = tv;
}

static void sift_pairs(int32_t *idx, float *val, size_t r, size_t n) {
    for (;;) {
        size_t c = 2 * r + 1;
        if (c >= n) return;
        if (c + 1 < n && idx[c + 1] > idx[c]) c++;
        if (idx[r] >= idx[c]) return;
        swap_pair(idx, val, r, c);
        r = c;
    }
}

static void heap_pairs(int32_t *idx, float *val, size_t n) {
    for (size_t start = n / 2; start-- > 0;) sift_pairs(idx, val, start, n);
    for (size_t end = n - 1; end > 0; end--) {
        swap_pair(idx, val, 0, end);
        sift_pairs(idx, val, 0, end);
    }
}

/* Introsort by idx: quicksort (median of three, Hoare partition), insertion
 * sort below 16, heapsort past 2 log2(n) levels: O(n log n) worst case. */
static void sort_pairs(int32_t *idx, float *val, size_t n) {
    int depth = 0;
    for (size_t m = n; m > 1; m >>= 1) depth += 2;
    while (n > 16) {
        if (depth-- == 0) {
            heap_pairs(idx, val, n);
            return;
        }
        int32_t a = idx[0], b = idx[n / 2], c = idx[n - 1];
        int32_t pivot = a < b ? (b < c ? b : (a < c ? c : a)) : (a < c ? a : (b < c ? c : b));
        /* the median of three is never the unique maximum, so 0 <= j <= n-2 */
        size_t i = 0, j = n - 1;
        for (;;) {
            while (idx[i] < pivot) i++;
            while (idx[j] > pivot) j--;
            if (i >= j) break;
            swap_pair(idx, val, i, j);
            i++;
            j--;
        }
        size_t left = j + 1; /* [0, left) <= pivot <= [left, n) */
        if (left < n - left) {
            sort_pairs(idx, val, left);
            idx += left;
            val += left;
            n -= left;
        } else {
            sort_pairs(idx + left, val + left, n - left);
            n = left;
        }
    }
    insertion_pairs(idx, val, n);
}

static void sort_keys(uint64_t *a, size_t n) {
    if (n <= 32) {
        for (size_t i = 1; i < n; i++) {
            uint64_t k = a[i];
            size_t j = i;
            while (j > 0 && a[j - 1] > k) {
                a[j] = a[j - 1];
                j--;
            }
            a[j] = k;
        }
        return;
    }
    for (size_t start = n / 2; start-- > 0;) {
        size_t r = start;
        for (;;) {
            size_t c = 2 * r + 1;
            if (c >= n) break;
            if (c + 1 < n && a[c + 1] > a[c]) c++;
            if (a[r] >= a[c]) break;
            uint64_t t = a[r]; a[r] = a[c]; a[c] = t;
            r = c;
        }
    }
    for (size_t end = n - 1; end > 0; end--) {
        uint64_t t = a[0]; a[0] = a[end]; a[end] = t;
        size_t r = 0;
        for (;;) {
            size_t c = 2 * r + 1;
            if (c >= end) break;
            if (c + 1 < end && a[c + 1] > a[c]) c++;
            if (a[r] >= a[c]) break;
            t = a[r]; a[r] = a[c]; a[c] = t;
            r = c;
        }
    }
}

/* ------------------------------------------------------------- featurizer */

static int spec_check(const qac_block_spec_t *b) {
    if (b->kind != QAC_FEAT_WORD && b->kind != QAC_FEAT_CHAR && b->kind != QAC_FEAT_PREFIX_CHAR)
        return QAC_E_INPUT;
    if (b->field < 0 || b->field >= QAC_FEAT_MAX_FIELDS) return QAC_E_INPUT;
    if (b->ngram_min < 1 || b->ngram_max < b->ngram_min || b->ngram_max > QAC_FEAT_MAX_N)
        return QAC_E_INPUT;
    if ((b->sublinear_tf != 0 && b->sublinear_tf != 1) || (b->open_end != 0 && b->open_end != 1))
        return QAC_E_INPUT;
    if (!(b->weight > 0.0f) || !isfinite(b->weight)) return QAC_E_INPUT;
    if (!(b->position_decay >= 0.0f) || !isfinite(b->position_decay)) return QAC_E_INPUT;
    if (b->n_features < 0) return QAC_E_INPUT;
    return QAC_OK;
}

void qac_featurizer_free(qac_featurizer_t *f) {
    if (!f) return;
    for (size_t b = 0; b < QAC_FEAT_MAX_BLOCKS; b++) free(f->posw[b]);
    free(f);
}

/* Block sizes of a featurizer's arrays: QAC_E_INPUT unless the specs are valid
 * and their n_features add up to n_features (< 2^31). */
static int check_blocks(const qac_block_spec_t *blocks, size_t n_blocks, size_t n_features) {
    if (!blocks || n_blocks == 0 || n_blocks > QAC_FEAT_MAX_BLOCKS) return QAC_E_INPUT;
    if (n_features > (size_t)INT32_MAX) return QAC_E_INPUT;
    int64_t total = 0;
    for (size_t b = 0; b < n_blocks; b++) {
        int rc = spec_check(&blocks[b]);
        if (rc) return rc;
        total += blocks[b].n_features;
        if (total > (int64_t)INT32_MAX) return QAC_E_INPUT;
    }
    return (size_t)total == n_features ? QAC_OK : QAC_E_INPUT;
}

int qac_featurizer_index(const qac_block_spec_t *blocks, size_t n_blocks, const uint64_t *keys,
                         size_t n_features, uint32_t *out_dir, size_t dir_cap,
                         size_t *out_n_dir) {
    if (!out_n_dir) return QAC_E_INPUT;
    *out_n_dir = 0;
    int rc = check_blocks(blocks, n_blocks, n_features);
    if (rc) return rc;
    if (n_features > 0 && !keys) return QAC_E_INPUT;
    size_t need = 0;
    for (size_t b = 0; b < n_blocks; b++)
        need += ((size_t)1 << dir_bits((size_t)blocks[b].n_features)) + 1;
    *out_n_dir = need;
    if (!out_dir) return QAC_OK;
    if (dir_cap < need) return QAC_E_CAPACITY;
    size_t at = 0, begin = 0;
    for (size_t b = 0; b < n_blocks; b++) {
        size_t n = (size_t)blocks[b].n_features;
        int bits = dir_bits(n);
        size_t nb = (size_t)1 << bits;
        const uint64_t *k = keys + begin;
        for (size_t i = 1; i < n; i++)
            if (k[i] <= k[i - 1]) return QAC_E_INPUT; /* not ascending, or a duplicate */
        size_t i = 0;
        for (size_t bucket = 0; bucket <= nb; bucket++) {
            while (i < n && bucket_of(k[i], bits) < bucket) i++;
            out_dir[at + bucket] = (uint32_t)i;
        }
        at += nb + 1;
        begin += n;
    }
    return QAC_OK;
}

int qac_featurizer_new(const qac_block_spec_t *blocks, size_t n_blocks, const uint64_t *keys,
                       const float *idf, size_t n_features, const uint32_t *dir, size_t n_dir,
                       qac_featurizer_t **out) {
    if (!out) return QAC_E_INPUT;
    *out = NULL;
    int rc = check_blocks(blocks, n_blocks, n_features);
    if (rc) return rc;
    if ((n_features > 0 && (!keys || !idf)) || !dir) return QAC_E_INPUT;
    for (size_t i = 0; i < n_features; i++)
        if (!isfinite(idf[i]) || idf[i] < 0.0f) return QAC_E_INPUT;

    qac_featurizer_t *f = calloc(1, sizeof *f);
    if (!f) return QAC_E_NOMEM;
    f->n_blocks = n_blocks;
    f->n_features = n_features;
    f->keys = keys;
    f->idf = idf;
    f->dir = dir;
    memcpy(f->blocks, blocks, n_blocks * sizeof *blocks);
    f->begin[0] = 0;
    size_t at = 0;
    for (size_t b = 0; b < n_blocks; b++) {
        size_t n = (size_t)blocks[b].n_features;
        f->begin[b + 1] = f->begin[b] + (int64_t)n;
        f->bits[b] = dir_bits(n);
        f->dir_at[b] = at;
        size_t nb = (size_t)1 << f->bits[b];
        if (n_dir - at < nb + 1 || at > n_dir) goto range;
        /* the directory and the keys agree: every bucket's keys carry its top bits,
         * keys ascend through the block (so they are distinct) */
        const uint32_t *d = dir + at;
        const uint64_t *k = keys + f->begin[b];
        if (d[0] != 0 || d[nb] != n) goto range;
        for (size_t i = 0; i < nb; i++) {
            if (d[i + 1] < d[i]) goto range;
            for (uint32_t j = d[i]; j < d[i + 1]; j++) {
                if (bucket_of(k[j], f->bits[b]) != i) goto range;
                if (j > 0 && k[j] <= k[j - 1]) goto range;
            }
        }
        at += nb + 1;
        if (blocks[b].kind == QAC_FEAT_PREFIX_CHAR) {
            f->posw[b] = malloc((QAC_FEAT_MAX_CODEPOINTS + 1) * sizeof(float));
            if (!f->posw[b]) {
                qac_featurizer_free(f);
                return QAC_E_NOMEM;
            }
            for (size_t p = 0; p <= QAC_FEAT_MAX_CODEPOINTS; p++)
                f->posw[b][p] = (float)pow((double)(p + 1), -(double)blocks[b].position_decay);
        }
    }
    if (at != n_dir) goto range;
    *out = f;
    return QAC_OK;
range:
    qac_featurizer_free(f);
    return QAC_E_RANGE;
}

int qac_featurizer_info(const qac_featurizer_t *f, size_t *n_blocks, size_t *n_features) {
    if (!f || !n_blocks || !n_features) return QAC_E_INPUT;
    *n_blocks = f->n_blocks;
    *n_features = f->n_features;
    return QAC_OK;
}

int qac_featurize_capacity(const qac_featurizer_t *f, const size_t *lens, size_t n_fields,
                           size_t *out_cap) {
    if (!f || !out_cap || (n_fields > 0 && !lens)) return QAC_E_INPUT;
    size_t cap = 0;
    for (size_t b = 0; b < f->n_blocks; b++) {
        size_t fi = (size_t)f->blocks[b].field;
        if (fi < n_fields) cap += block_bound(&f->blocks[b], lens[fi]);
    }
    *out_cap = cap;
    return QAC_OK;
}

int qac_featurize_max_capacity(const qac_featurizer_t *f, size_t *out_cap) {
    if (!f || !out_cap) return QAC_E_INPUT;
    size_t cap = 0;
    for (size_t b = 0; b < f->n_blocks; b++)
        cap += block_bound(&f->blocks[b], QAC_FEAT_MAX_CODEPOINTS);
    *out_cap = cap;
    return QAC_OK;
}

/* One row, fields already validated. */
static int featurize_row(const qac_featurizer_t *f, const char *const *fields,
                         const size_t *lens, size_t n_fields, int32_t *idx, float *val,
                         size_t cap, size_t *out_nnz) {
    size_t nnz = 0;
    double row_sq = 0.0;
    for (size_t b = 0; b < f->n_blocks; b++) {
        const qac_block_spec_t *spec = &f->blocks[b];
        size_t fi = (size_t)spec->field;
        if (fi >= n_fields || lens[fi] == 0) continue;
        sink_t sink = {f, b, idx ? idx + nnz : NULL, val ? val + nnz : NULL, NULL, 0,
                       cap - nnz, 0};
        block_extract(spec, (int32_t)b, f->posw[b], (const unsigned char *)fields[fi], lens[fi],
                      &sink);
        if (sink.overflow) return QAC_E_CAPACITY;
        int32_t *bi = sink.idx;
        float *bv = sink.val;
        sort_pairs(bi, bv, sink.n);
        size_t m = 0;
        for (size_t i = 0; i < sink.n; i++) {
            if (m > 0 && bi[m - 1] == bi[i]) {
                bv[m - 1] += bv[i];
            } else {
                bi[m] = bi[i];
                bv[m] = bv[i];
                m++;
            }
        }
        double sq = 0.0;
        for (size_t i = 0; i < m; i++) {
            double tf = bv[i];
            if (spec->sublinear_tf && tf > 1.0) tf = 1.0 + log(tf);
            double x = tf * (double)f->idf[bi[i]];
            bv[i] = (float)x;
            sq += x * x;
        }
        if (!(sq > 0.0)) continue; /* nothing known (or all idf 0): empty block */
        double scale = (double)spec->weight / sqrt(sq);
        for (size_t i = 0; i < m; i++) {
            bv[i] = (float)((double)bv[i] * scale);
            row_sq += (double)bv[i] * (double)bv[i];
        }
        nnz += m;
    }
    if (row_sq > 0.0) {
        double inv = 1.0 / sqrt(row_sq);
        for (size_t i = 0; i < nnz; i++) val[i] = (float)((double)val[i] * inv);
    }
    *out_nnz = nnz;
    return QAC_OK;
}

int qac_featurize(const qac_featurizer_t *f, const char *const *fields, const size_t *lens,
                  size_t n_fields, int32_t *out_idx, float *out_val, size_t cap,
                  size_t *out_nnz) {
    if (!f || !out_nnz) return QAC_E_INPUT;
    *out_nnz = 0;
    if (n_fields > 0 && (!fields || !lens)) return QAC_E_INPUT;
    if (cap > 0 && (!out_idx || !out_val)) return QAC_E_INPUT;
    for (size_t i = 0; i < n_fields; i++) {
        int rc = check_field(fields[i], lens[i]);
        if (rc) return rc;
    }
    return featurize_row(f, fields, lens, n_fields, out_idx, out_val, cap, out_nnz);
}

int qac_featurize2(const qac_featurizer_t *f, const char *text, size_t text_len,
                   const char *context, size_t context_len, int32_t *out_idx, float *out_val,
                   size_t cap, size_t *out_nnz) {
    const char *fields[2] = {text, context};
    size_t lens[2] = {text_len, context_len};
    return qac_featurize(f, fields, lens, 2, out_idx, out_val, cap, out_nnz);
}

/* ------------------------------------------------------------------ batch */

typedef struct {
    const qac_featurizer_t *f;
    const char *const *bufs;
    const int64_t *const *offs;
    size_t n_fields;
    size_t r0, r1;
    const int64_t *indptr; /* NULL: count pass, counts into out_counts[r+1] */
    int64_t *out_counts;
    int32_t *out_idx;
    float *out_val;
    int rc;
} batch_job_t;

static void *batch_worker(void *arg) {
    batch_job_t *job = arg;
    const qac_featurizer_t *f = job->f;
    size_t cap = 0;
    qac_featurize_max_capacity(f, &cap);
    int32_t *idx = malloc((cap ? cap : 1) * sizeof(int32_t));
    float *val = malloc((cap ? cap : 1) * sizeof(float));
    if (!idx || !val) {
        free(idx);
        free(val);
        job->rc = QAC_E_NOMEM;
        return NULL;
    }
    const char *fields[QAC_FEAT_MAX_FIELDS];
    size_t lens[QAC_FEAT_MAX_FIELDS];
    job->rc = QAC_OK;
    for (size_t r = job->r0; r < job->r1 && job->rc == QAC_OK; r++) {
        for (size_t i = 0; i < job->n_fields; i++) {
            int64_t a = job->offs[i][r], b = job->offs[i][r + 1];
            if (a < 0 || b < a) {
                job->rc = QAC_E_RANGE;
                break;
            }
            fields[i] = job->bufs[i] ? job->bufs[i] + a : NULL;
            lens[i] = (size_t)(b - a);
            int rc = check_field(fields[i], lens[i]);
            if (rc) {
                job->rc = rc;
                break;
            }
        }
        if (job->rc) break;
        size_t nnz = 0;
        int rc = featurize_row(f, fields, lens, job->n_fields, idx, val, cap, &nnz);
        if (rc) {
            job->rc = rc;
            break;
        }
        if (!job->indptr) {
            job->out_counts[r + 1] = (int64_t)nnz;
        } else {
            int64_t a = job->indptr[r], b = job->indptr[r + 1];
            if (b - a != (int64_t)nnz) {
                job->rc = QAC_E_RANGE;
                break;
            }
            memcpy(job->out_idx + a, idx, nnz * sizeof(int32_t));
            memcpy(job->out_val + a, val, nnz * sizeof(float));
        }
    }
    free(idx);
    free(val);
    return NULL;
}

static int run_jobs(batch_job_t *jobs, size_t nt, void *(*fn)(void *)) {
    pthread_t tid[MAX_THREADS];
    size_t started = 0;
    int rc = QAC_OK;
    for (size_t t = 1; t < nt; t++) {
        if (pthread_create(&tid[t], NULL, fn, &jobs[t]) != 0) {
            rc = QAC_E_THREAD;
            break;
        }
        started = t;
    }
    if (rc == QAC_OK) fn(&jobs[0]);
    for (size_t t = 1; t <= started; t++) pthread_join(tid[t], NULL);
    if (rc) return rc;
    for (size_t t = 0; t < nt; t++)
        if (jobs[t].rc) return jobs[t].rc;
    return QAC_OK;
}

static size_t n_workers(int n_threads, size_t n_rows) {
    size_t nt = n_threads <= 0 ? 2 : (size_t)n_threads;
    if (nt > MAX_THREADS) nt = MAX_THREADS;
    if (nt > n_rows) nt = n_rows;
    return nt ? nt : 1;
}

static int batch_args(const qac_featurizer_t *f, const char *const *bufs,
                      const int64_t *const *offs, size_t n_fields, size_t n_rows) {
    if (!f || n_fields > QAC_FEAT_MAX_FIELDS) return QAC_E_INPUT;
    if (n_fields > 0 && (!bufs || !offs)) return QAC_E_INPUT;
    for (size_t i = 0; i < n_fields; i++) {
        if (!offs[i]) return QAC_E_INPUT;
        if (!bufs[i] && offs[i][n_rows] != offs[i][0]) return QAC_E_INPUT;
    }
    return QAC_OK;
}

int qac_featurize_batch_count(const qac_featurizer_t *f, const char *const *bufs,
                              const int64_t *const *offs, size_t n_fields, size_t n_rows,
                              int n_threads, int64_t *out_indptr, size_t indptr_cap) {
    if (!out_indptr) return QAC_E_INPUT;
    int rc = batch_args(f, bufs, offs, n_fields, n_rows);
    if (rc) return rc;
    if (indptr_cap < n_rows + 1) return QAC_E_CAPACITY;
    out_indptr[0] = 0;
    if (n_rows == 0) return QAC_OK;
    size_t nt = n_workers(n_threads, n_rows);
    batch_job_t jobs[MAX_THREADS];
    for (size_t t = 0; t < nt; t++)
        jobs[t] = (batch_job_t){f, bufs, offs, n_fields, n_rows * t / nt, n_rows * (t + 1) / nt,
                                NULL, out_indptr, NULL, NULL, QAC_OK};
    rc = run_jobs(jobs, nt, batch_worker);
    if (rc) return rc;
    for (size_t r = 0; r < n_rows; r++) out_indptr[r + 1] += out_indptr[r];
    return QAC_OK;
}

int qac_featurize_batch(const qac_featurizer_t *f, const char *const *bufs,
                        const int64_t *const *offs, size_t n_fields, size_t n_rows,
                        int n_threads, const int64_t *indptr, int32_t *out_idx, float *out_val,
                        size_t nnz) {
    if (!indptr) return QAC_E_INPUT;
    if (nnz > 0 && (!out_idx || !out_val)) return QAC_E_INPUT;
    int rc = batch_args(f, bufs, offs, n_fields, n_rows);
    if (rc) return rc;
    if (indptr[0] != 0 || indptr[n_rows] != (int64_t)nnz) return QAC_E_RANGE;
    for (size_t r = 0; r < n_rows; r++)
        if (indptr[r + 1] < indptr[r]) return QAC_E_RANGE;
    if (n_rows == 0) return QAC_OK;
    size_t nt = n_workers(n_threads, n_rows);
    batch_job_t jobs[MAX_THREADS];
    for (size_t t = 0; t < nt; t++)
        jobs[t] = (batch_job_t){f, bufs, offs, n_fields, n_rows * t / nt, n_rows * (t + 1) / nt,
                                indptr, NULL, out_idx, out_val, QAC_OK};
    return run_jobs(jobs, nt, batch_worker);
}

/* ------------------------------------------------------------- extraction */

typedef struct {
    const qac_block_spec_t *spec;
    int32_t block_index;
    const float *posw;
    const char *buf;
    const int64_t *offs;
    size_t r0, r1;
    uint64_t *keys; /* this job's region */
    size_t cap;     /* its size */
    size_t used;
    int64_t *counts; /* counts[r+1] = distinct keys of row r */
    int rc;
} extract_job_t;

static void *extract_worker(void *arg) {
    extract_job_t *job = arg;
    job->rc = QAC_OK;
    job->used = 0;
    for (size_t r = job->r0; r < job->r1; r++) {
        int64_t a = job->offs[r], b = job->offs[r + 1];
        if (a < 0 || b < a) {
            job->rc = QAC_E_RANGE;
            return NULL;
        }
        const char *s = job->buf ? job->buf + a : NULL;
        size_t n = (size_t)(b - a);
        int rc = check_field(s, n);
        if (rc) {
            job->rc = rc;
            return NULL;
        }
        sink_t sink = {NULL, 0, NULL, NULL, job->keys ? job->keys + job->used : NULL, 0,
                       job->cap - job->used, 0};
        if (n > 0)
            block_extract(job->spec, job->block_index, job->posw, (const unsigned char *)s, n,
                          &sink);
        if (sink.overflow) {
            job->rc = QAC_E_CAPACITY;
            return NULL;
        }
        uint64_t *k = sink.keys;
        sort_keys(k, sink.n);
        size_t m = 0;
        for (size_t i = 0; i < sink.n; i++)
            if (m == 0 || k[m - 1] != k[i]) k[m++] = k[i];
        job->counts[r + 1] = (int64_t)m;
        job->used += m;
    }
    return NULL;
}

int qac_extract_capacity(const qac_block_spec_t *spec, const int64_t *offs, size_t n_rows,
                         size_t *out_cap) {
    if (!spec || !offs || !out_cap) return QAC_E_INPUT;
    int rc = spec_check(spec);
    if (rc) return rc;
    size_t cap = 0;
    for (size_t r = 0; r < n_rows; r++) {
        if (offs[r] < 0 || offs[r + 1] < offs[r]) return QAC_E_RANGE;
        cap += block_bound(spec, (size_t)(offs[r + 1] - offs[r]));
    }
    *out_cap = cap;
    return QAC_OK;
}

int qac_extract_keys(const qac_block_spec_t *spec, int32_t block_index, const char *buf,
                     const int64_t *offs, size_t n_rows, int n_threads, uint64_t *out_keys,
                     size_t cap, int64_t *out_ptr, size_t ptr_cap) {
    if (!spec || !offs || !out_ptr) return QAC_E_INPUT;
    if (block_index < 0 || block_index >= QAC_FEAT_MAX_BLOCKS) return QAC_E_INPUT;
    if (cap > 0 && !out_keys) return QAC_E_INPUT;
    if (ptr_cap < n_rows + 1) return QAC_E_CAPACITY;
    int rc = spec_check(spec);
    if (rc) return rc;
    if (!buf && offs[n_rows] != offs[0]) return QAC_E_INPUT;
    out_ptr[0] = 0;
    if (n_rows == 0) return QAC_OK;
    float *posw = NULL;
    if (spec->kind == QAC_FEAT_PREFIX_CHAR) {
        posw = malloc((QAC_FEAT_MAX_CODEPOINTS + 1) * sizeof(float));
        if (!posw) return QAC_E_NOMEM;
        for (size_t p = 0; p <= QAC_FEAT_MAX_CODEPOINTS; p++)
            posw[p] = (float)pow((double)(p + 1), -(double)spec->position_decay);
    }
    size_t nt = n_workers(n_threads, n_rows);
    extract_job_t jobs[MAX_THREADS];
    size_t base = 0, t = 0;
    rc = QAC_OK;
    /* each job gets the region its rows' bounds add up to, in row order */
    for (t = 0; t < nt && rc == QAC_OK; t++) {
        size_t r0 = n_rows * t / nt, r1 = n_rows * (t + 1) / nt, need = 0;
        for (size_t r = r0; r < r1; r++) {
            if (offs[r] < 0 || offs[r + 1] < offs[r]) {
                rc = QAC_E_RANGE;
                break;
            }
            need += block_bound(spec, (size_t)(offs[r + 1] - offs[r]));
        }
        if (rc) break;
        if (base + need > cap) {
            rc = QAC_E_CAPACITY;
            break;
        }
        jobs[t] = (extract_job_t){spec, block_index, posw, buf, offs, r0, r1,
                                  out_keys ? out_keys + base : NULL, need, 0, out_ptr, QAC_OK};
        base += need;
    }
    if (rc == QAC_OK) {
        pthread_t tid[MAX_THREADS];
        size_t started = 0;
        for (t = 1; t < nt; t++) {
            if (pthread_create(&tid[t], NULL, extract_worker, &jobs[t]) != 0) {
                rc = QAC_E_THREAD;
                break;
            }
            started = t;
        }
        if (rc == QAC_OK) extract_worker(&jobs[0]);
        for (t = 1; t <= started; t++) pthread_join(tid[t], NULL);
        for (t = 0; t < nt && rc == QAC_OK; t++) rc = jobs[t].rc;
    }
    free(posw);
    if (rc) return rc;
    size_t dst = 0;
    for (t = 0; t < nt; t++) {
        if (jobs[t].used && jobs[t].keys != out_keys + dst)
            memmove(out_keys + dst, jobs[t].keys, jobs[t].used * sizeof(uint64_t));
        dst += jobs[t].used;
    }
    for (size_t r = 0; r < n_rows; r++) out_ptr[r + 1] += out_ptr[r];
    return QAC_OK;
}

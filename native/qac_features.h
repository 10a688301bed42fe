/* qac native kernel: features. Part of the ABI declared by qac.h.
 *
 * TF-IDF featurization of short, already-normalized strings. The definitions
 * (tokens, n-grams, keys, tf, idf, normalization) are the spec in the
 * docstring of qac/features/__init__.py; this file implements them.
 *
 * A row has n_fields input strings (field 0 = main text, field 1 = context);
 * each block reads one field (a field index >= n_fields reads as empty).
 * Every field must be valid UTF-8 (else QAC_E_UTF8) of at most
 * QAC_FEAT_MAX_CODEPOINTS code points (else QAC_E_INPUT).
 *
 * Keys: FNV-1a 64 over one byte (the block index) followed by the UTF-8
 * bytes of the n-gram (word n-grams: tokens joined by one space), times
 * 0x9E3779B97F4A7C15 mod 2^64 (a bijection that spreads the top bits).
 *
 * The vocabulary is built once, when fitting, into arrays the featurizer reads
 * in place (N worker processes mapping one model directory share one copy):
 * keys ascending within each block, their idf, and a directory over each
 * block's keys by their top bits (qac_featurizer_index).
 *
 * Scratch contract of qac_featurize: the output buffers are the only scratch
 * (every known n-gram occurrence is written there before sorting and
 * merging), so `cap` must be at least qac_featurize_capacity(...) of the same
 * fields; with less it may fail with QAC_E_CAPACITY even if the final row
 * would fit. qac_featurize_max_capacity gives a bound valid for any accepted
 * input, so a caller (e.g. a fused C query path) can allocate once per
 * thread. No call allocates; a featurizer is immutable and may be shared by
 * any number of threads.
 */
#ifndef QAC_FEATURES_H
#define QAC_FEATURES_H

#include <stddef.h>
#include <stdint.h>

/* QAC_CDEF_BEGIN */
#define QAC_FEAT_WORD 0
#define QAC_FEAT_CHAR 1
#define QAC_FEAT_PREFIX_CHAR 2
#define QAC_FEAT_MAX_BLOCKS 16
#define QAC_FEAT_MAX_N 16
#define QAC_FEAT_MAX_FIELDS 8
#define QAC_FEAT_MAX_CODEPOINTS 1024

/* One feature block, as configured in Python (qac.features.BlockConfig). */
typedef struct {
    int32_t kind;           /* QAC_FEAT_WORD / _CHAR / _PREFIX_CHAR */
    int32_t field;          /* which input field the block reads */
    int32_t ngram_min;      /* 1 <= ngram_min <= ngram_max <= QAC_FEAT_MAX_N */
    int32_t ngram_max;
    int32_t sublinear_tf;   /* 0/1: tf -> 1 + ln(tf) for tf > 1 */
    int32_t open_end;       /* 0/1 (char kinds): last token unmarked unless the field ends in a separator */
    float position_decay;   /* prefix_char: n-gram at token position p weighs (p+1)^-decay */
    float weight;           /* block weight after block L2 normalization */
    int64_t n_features;     /* size of the block's contiguous feature-id range */
} qac_block_spec_t;

typedef struct qac_featurizer qac_featurizer_t;

/* The directory of a vocabulary: keys[n_features] (block b's n_features
 * keys, ascending, after block b-1's) -> for each block b with n keys,
 * 2^bits + 1 uint32 entries (bits: the smallest with 2^(bits+1) >= n), entry
 * i = the number of the block's keys whose top `bits` bits are below i.
 * *out_n_dir = the directory's length; with out_dir NULL only that is given,
 * else QAC_E_CAPACITY when dir_cap is smaller. QAC_E_INPUT for bad specs or
 * keys that do not ascend within a block. */
int qac_featurizer_index(const qac_block_spec_t *blocks, size_t n_blocks, const uint64_t *keys,
                         size_t n_features, uint32_t *out_dir, size_t dir_cap,
                         size_t *out_n_dir);

/* Wrap a vocabulary: keys[i]/idf[i] belong to feature i; blocks own
 * consecutive ranges of n_features (in block order), summing to n_features;
 * dir[n_dir] is qac_featurizer_index of the same keys. The featurizer keeps
 * POINTERS to keys, idf and dir (no copy: they may be read-only mmaps that
 * the caller keeps alive) and checks them in O(n_features + n_dir):
 * QAC_E_RANGE when the directory does not match the keys (or keys are not
 * ascending and distinct within a block), QAC_E_INPUT for bad specs or idf. */
int qac_featurizer_new(const qac_block_spec_t *blocks, size_t n_blocks,
                       const uint64_t *keys, const float *idf, size_t n_features,
                       const uint32_t *dir, size_t n_dir, qac_featurizer_t **out);
void qac_featurizer_free(qac_featurizer_t *featurizer);
int qac_featurizer_info(const qac_featurizer_t *featurizer, size_t *n_blocks,
                        size_t *n_features);

/* Upper bound on the entries qac_featurize may write for fields of these
 * byte lengths (lens[i] for field i; 0 for fields not passed). */
int qac_featurize_capacity(const qac_featurizer_t *featurizer, const size_t *lens,
                           size_t n_fields, size_t *out_cap);
/* Upper bound valid for any input the featurizer accepts. */
int qac_featurize_max_capacity(const qac_featurizer_t *featurizer, size_t *out_cap);

/* Featurize one row: fields[i] has lens[i] bytes (NULL allowed when 0).
 * Writes *out_nnz sorted, distinct feature ids and float values (row
 * L2-normalized; an all-empty row has nnz 0). */
int qac_featurize(const qac_featurizer_t *featurizer, const char *const *fields,
                  const size_t *lens, size_t n_fields, int32_t *out_idx, float *out_val,
                  size_t cap, size_t *out_nnz);

/* qac_featurize for the common two-field row (text, context); either may be
 * NULL with length 0. Same contract. */
int qac_featurize2(const qac_featurizer_t *featurizer, const char *text, size_t text_len,
                   const char *context, size_t context_len, int32_t *out_idx, float *out_val,
                   size_t cap, size_t *out_nnz);

/* Batch, pass 1: field i of row r is bufs[i][offs[i][r] : offs[i][r+1]]
 * (each offs[i] has n_rows+1 non-decreasing entries, offs[i][0] >= 0).
 * Writes out_indptr[n_rows+1] (out_indptr[0] = 0) into a buffer of indptr_cap
 * entries (QAC_E_CAPACITY when fewer than n_rows+1). */
int qac_featurize_batch_count(const qac_featurizer_t *featurizer, const char *const *bufs,
                              const int64_t *const *offs, size_t n_fields, size_t n_rows,
                              int n_threads, int64_t *out_indptr, size_t indptr_cap);
/* Batch, pass 2: writes the CSR rows at the positions of indptr (from pass 1;
 * nnz = indptr[n_rows]). A row that does not fit its slot is QAC_E_RANGE.
 * Deterministic for any n_threads. */
int qac_featurize_batch(const qac_featurizer_t *featurizer, const char *const *bufs,
                        const int64_t *const *offs, size_t n_fields, size_t n_rows,
                        int n_threads, const int64_t *indptr, int32_t *out_idx,
                        float *out_val, size_t nnz);

/* Fitting: the distinct keys of each row for one block (block_index enters
 * the key). Row r's text is buf[offs[r] : offs[r+1]]. Row r's keys are
 * out_keys[out_ptr[r] : out_ptr[r+1]], ascending. cap (out_keys' entries) must
 * be at least qac_extract_capacity(...) of the same rows, ptr_cap (out_ptr's)
 * at least n_rows+1: QAC_E_CAPACITY otherwise. */
int qac_extract_capacity(const qac_block_spec_t *spec, const int64_t *offs, size_t n_rows,
                         size_t *out_cap);
int qac_extract_keys(const qac_block_spec_t *spec, int32_t block_index, const char *buf,
                     const int64_t *offs, size_t n_rows, int n_threads, uint64_t *out_keys,
                     size_t cap, int64_t *out_ptr, size_t ptr_cap);
/* QAC_CDEF_END */

#endif

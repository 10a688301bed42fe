/* qac native kernel: the long-tail candidate pool's merge and ranker.
 *
 * The per-keystroke half of qac.longtail: the beam's answers and the generated
 * candidates (texts built in Python from marisa-trie tables) are merged into one
 * pool of distinct texts, each row gets the ranker's features and one linear
 * score, and the rows come back best first. The features are those of
 * qac.longtail.FEATURES (column order below); qac.longtail.LongTail.pool builds
 * the same rows as a matrix for fitting, and the tests hold the scores equal.
 */
#ifndef QAC_LONGTAIL_H
#define QAC_LONGTAIL_H

#include <stddef.h>
#include <stdint.h>

/* QAC_CDEF_BEGIN */
#define QAC_LT_NF 20  /* features per row (len(qac.longtail.FEATURES)) */
#define QAC_LT_NSRC 6 /* sources, also the first 6 feature columns (is_<source>) */
#define QAC_LT_MODEL 0
#define QAC_LT_MPC 1
#define QAC_LT_HISTORY 5

typedef struct qac_ranker qac_ranker_t;
typedef struct qac_pool_scratch qac_pool_scratch_t;

/* Wrap the labels for the ranker. labels[0..labels_len) holds n_labels UTF-8
 * texts joined by '\n' (the completer's label blob); logpop[i] = log(1 +
 * popularity of label i); weights[QAC_LT_NF] the ranker's weights (finite).
 * Pointers are kept, not copied (the caller keeps the arrays alive); the line
 * offsets are computed once here. QAC_E_RANGE if the blob does not hold exactly
 * n_labels lines, QAC_E_INPUT for bad arguments. */
int qac_ranker_new(const char *labels, size_t labels_len, size_t n_labels,
                   const double *logpop, size_t n_logpop, const double *weights,
                   size_t n_weights, qac_ranker_t **out);
void qac_ranker_free(qac_ranker_t *ranker);

/* Per-thread working memory for pools of up to cap rows (beam answers plus
 * generated candidates) and previous queries of up to prev_cap bytes. */
int qac_pool_scratch_new(size_t cap, size_t prev_cap, qac_pool_scratch_t **out);
void qac_pool_scratch_free(qac_pool_scratch_t *scratch);

/* Merge and rank one keystroke's pool.
 *
 * prefix (non-empty) and prev (may be empty) are the normalized prefix and the
 * previous query, UTF-8. The beam's answers are model_ids/model_scores[n_model]
 * (label ids, best first). The generated candidates are n_extra texts joined by
 * '\n' in extra[0..extra_len) (none holds a '\n'), each with its generator
 * extra_gen (1..QAC_LT_NSRC-1), its number extra_num (a count; for history the
 * recency rank) and the popularity of its text extra_pop.
 *
 * The previous query is never a row; a generated text that does not start with
 * the prefix is skipped; a text made several times is one row, named after the
 * first source that made it (the beam's first). Writes *out_n rows, best first
 * (ties: pool order, the beam's rows first): out_ref (label id, or -1 - j for
 * extra text j), out_src (source) and out_score, all of out_cap entries
 * (QAC_E_CAPACITY if the pool has more rows, or more than the scratch's cap, or
 * prev is longer than its prev_cap). No allocation; time linear in the bytes of
 * the texts (times log of the previous query's words). */
int qac_rank_pool(const qac_ranker_t *ranker, qac_pool_scratch_t *scratch,
                  const char *prefix, size_t prefix_len, const char *prev, size_t prev_len,
                  const int32_t *model_ids, const float *model_scores, size_t n_model,
                  const char *extra, size_t extra_len, const int32_t *extra_gen,
                  const int64_t *extra_num, const int64_t *extra_pop, size_t n_extra,
                  int32_t *out_ref, int32_t *out_src, double *out_score, size_t out_cap,
                  size_t *out_n);

/* The whole long-tail keystroke in one crossing: qac_predict_text on (prefix,
 * prev) with topk beam answers in [lo, hi) (lo == hi: no search), then
 * qac_rank_pool over them. Arguments as in those two functions. */
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
                      size_t *out_n);
/* QAC_CDEF_END */

#endif

/* qac native kernel: the answerer, the whole per-keystroke path of completion.
 *
 * One handle, built when a completer loads, holds (borrows) everything a keystroke
 * needs: the featurizer, the XR-Linear model, the sorted labels (text, offsets),
 * their popularity, and the pool ranker (a forest of regression trees). One call,
 * qac_answer, takes the normalized prefix, the user's context (previous query,
 * this session's queries, the past queries of the user) and the candidates that
 * Python generated (generated queries), and returns the final top-k:
 *
 *   label range of the prefix (bisection over the sorted labels)
 *   -> featurize + prefix-constrained beam search      (source "model")
 *   -> + the user's past queries that start with the prefix     ("history")
 *   -> + the most popular labels of the range (by a range-maximum index) ("mpc")
 *   -> + the generated candidates                      ("session", "suffix", ...)
 *   -> one pool of distinct texts, one feature row each (the schema below)
 *   -> one score each from the forest -> the k best, best first.
 *
 * This session's queries give the rows they repeat their session features; the
 * stores write every query to the history list too, which is where a past query
 * becomes a candidate.
 *
 * The feature schema is declared once, here (QAC_FEATURES); Python reads the
 * names through qac_feature_name, and a fitted ranker records the names it was
 * fitted on, so adding a feature never misreads an older ranker.
 */
#ifndef QAC_ANSWER_H
#define QAC_ANSWER_H

#include <stddef.h>
#include <stdint.h>

/* The pool's features, in column order: X(ENUM_NAME, "name", "what it is").
 * Logs are natural; "missing" values are given as stated (never NaN). */
#define QAC_FEATURES(X)                                                               \
    X(IS_MODEL, "is_model", "made by the beam search")                               \
    X(IS_MPC, "is_mpc", "among the most popular completions of the prefix")          \
    X(IS_HISTORY, "is_history", "a past query of the user")                          \
    X(IS_SESSION, "is_session", "a reformulation of the previous query")            \
    X(IS_SUFFIX, "is_suffix", "the prefix's last words replaced by a popular ending") \
    X(IS_WORD, "is_word", "the partial word completed (and extended)")               \
    X(MODEL_LOGSCORE, "model_logscore", "log of the engine score (-12 if not in the beam)") \
    X(MODEL_RANK, "model_rank", "1/rank in the beam (0 if not in it)")              \
    X(LOGPOP, "logpop", "log(1 + popularity)")                                       \
    X(POP_SHARE, "pop_share", "log((1 + popularity) / (1 + popularity of all labels with the prefix))") \
    X(MPC_RANK, "mpc_rank", "1/rank among the most popular completions (0 if not)") \
    X(IS_LABEL, "is_label", "a query of the training log")                           \
    X(GEN_LOGCOUNT, "gen_logcount", "log(1 + count) of a generated query's pieces")  \
    X(PREFIX_CHARS, "prefix_chars", "characters typed")                              \
    X(ADDED_CHARS, "added_chars", "characters beyond the prefix")                    \
    X(ADDED_WORDS, "added_words", "words beyond the prefix's")                       \
    X(HAS_PREV, "has_prev", "the session has a previous query")                      \
    X(PREV_OVERLAP, "prev_overlap", "share of the new words that are words of the previous query") \
    X(PREV_CHAR3, "prev_char3", "Jaccard similarity of character 3-grams with the previous query") \
    X(EXTENDS_PREV, "extends_prev", "starts with the previous query")                \
    X(HAS_HISTORY, "has_history", "the user has past queries with this prefix")      \
    X(HIST_MATCHES, "hist_matches", "log(1 + past queries of the user with this prefix)") \
    X(HIST_COUNT, "hist_count", "log(1 + times the user issued it)")                 \
    X(HIST_AGE, "hist_age", "log(1 + seconds since the user last issued it) (20 if never)") \
    X(HIST_RANK, "hist_rank", "1/rank by recency among the user's past queries with this prefix (0 if none)") \
    X(SESS_COUNT, "sess_count", "times issued earlier in this session")             \
    X(SESS_RANK, "sess_rank", "1/position among this session's queries, most recent first (0 if not)") \
    X(RECENT_POP, "recent_pop", "log(1 + times issued in the last days of the training log)")  \
    X(RECENT_TREND, "recent_trend", "log((1 + recent count) / (1 + count in the whole log))") \
    X(RECENT_RANK, "recent_rank", "1/rank by recent count in the pool (0 if not recent)")

/* QAC_CDEF_BEGIN */
#define QAC_NF 30    /* features per pool row (QAC_FEATURES) */
#define QAC_NSRC 9   /* candidate sources */
#define QAC_SRC_MODEL 0
#define QAC_SRC_MPC 1
#define QAC_SRC_HISTORY 2
#define QAC_SRC_SESSION 3
#define QAC_SRC_SUFFIX 4
#define QAC_SRC_WORD 5
#define QAC_SRC_FRESH 6 /* live: a query the model never saw, from the event stream */
#define QAC_SRC_TYPO 7  /* a label or past query within a few edits of the prefix */
#define QAC_SRC_WORDS 8 /* successive words start with the typed words */
#define QAC_MAX_SPANS 16 /* highlight spans per answer (one per typed word at most) */
#define QAC_MISSING_AGE 20 /* HIST_AGE of a query never issued */
#define QAC_MAX_MPC 1000 /* most popular completions the answerer lists itself */

typedef struct qac_answerer qac_answerer_t;
typedef struct qac_answer_scratch qac_answer_scratch_t;

/* The name of feature column i (0 <= i < QAC_NF) or of source s, else NULL. */
const char *qac_feature_name(int i);
const char *qac_source_name(int s);

/* The labels, sorted bytewise (UTF-8: the same order as Python's str order).
 * Label i is text[offsets[i], offsets[i+1] - 1): the labels joined by '\n' with
 * offsets[n] == text_len + 1. popularity[n] >= 0; popcum[n+1] its running sum
 * (popcum[0] == 0); counts[n] >= 0 the times each was issued in the training log,
 * recent[n] (<= counts) those in its last days. */
typedef struct {
    const char *text; size_t text_len;
    const int64_t *offsets; size_t n_offsets;     /* n + 1 */
    const int64_t *popularity; size_t n_popularity; /* n */
    const int64_t *popcum; size_t n_popcum;       /* n + 1 */
    const int64_t *counts; size_t n_counts;       /* n */
    const int64_t *recent; size_t n_recent;       /* n */
    /* the word-start index (qac_words_index), saved with the model so workers
     * share it: every word start once, sorted by the text from there on */
    const int32_t *word_label; const int32_t *word_off; size_t n_words;
    /* the labels' child table (qac_child_table), saved with the model likewise: the
     * typo search's trie, 4 * (n + 1) int32 */
    const int32_t *tree; size_t n_tree;
} qac_labels_view;

/* The word-start index of labels joined as in qac_labels_view: (label id, byte
 * offset) of every word start (a label's first byte, and each byte other than a
 * space that follows a space), sorted by the bytes from there to the label's end,
 * then by label id. *n_words gets their number; QAC_E_CAPACITY (nothing written)
 * when cap is smaller. */
int qac_words_index(const char *text, size_t text_len, const int64_t *offsets,
                    size_t n_offsets, int32_t *word_label, int32_t *word_off, size_t cap,
                    size_t *n_words);

/* The child table of labels joined as in qac_labels_view (sorted; see qac_lcp_t in
 * qac_match.h): 4 * (n + 1) int32 into out, QAC_E_CAPACITY (nothing written) when cap
 * is smaller. */
int qac_child_table(const char *text, size_t text_len, const int64_t *offsets,
                    size_t n_offsets, int32_t *out, size_t cap);

/* A forest of binary regression trees over the features: score = base + the sum
 * over trees of the leaf a row reaches. Node j splits on feature[j] (a column,
 * 0 <= feature < QAC_NF): x <= threshold[j] goes to left[j], else right[j]; a
 * child >= 0 is a node, a child < 0 is leaf ~child. roots[t] is tree t's root
 * (a node, or ~leaf for a tree that is one leaf). */
typedef struct {
    const int32_t *feature; const double *threshold;
    const int32_t *left; const int32_t *right; size_t n_nodes;
    const double *leaf; size_t n_leaves;
    const int32_t *roots; size_t n_trees;
    double base;
} qac_forest_view;

/* The user's context of one keystroke. Texts are normalized queries joined by
 * '\n' (none holds a '\n'). session: this session's queries, most recent first
 * (the first is the previous query), session_time[i] when each was issued.
 * history: distinct past queries of the user (only those that start with the
 * prefix are used), history_count[i] >= 1 how often, history_time[i] when last.
 * Times are Unix seconds; <= 0 means unknown (then the order given stands for
 * recency, most recent first); ages are now - time, floored at 0. */
typedef struct {
    const char *prev; size_t prev_len;
    const char *session; size_t session_len; size_t n_session;
    const double *session_time;
    const char *history; size_t history_len; size_t n_history;
    const int32_t *history_count; const double *history_time;
    double now;
    /* live (qac/live.py): label_live[i] * live_scale is label i's time-decayed count
     * of submissions since the model was trained (label_live NULL: none; else
     * n_label_live == labels, live_scale finite >= 0). It adds to the recent and
     * whole-log counts of the recent_* features. */
    const double *label_live; size_t n_label_live; double live_scale;
} qac_context_view;

/* Candidates generated outside the kernel: n texts joined by '\n', each with its
 * source (QAC_SRC_MPC .. QAC_SRC_WORD but history, or QAC_SRC_FRESH), a count (>= 0: for MPC the popularity,
 * for the generators the count of the pieces they joined) and the popularity of
 * the whole text (>= 0). Texts that do not start with the prefix are skipped. */
typedef struct {
    const char *text; size_t text_len; size_t n;
    const int32_t *source; const int64_t *count; const int64_t *popularity;
    const double *live; /* NULL, or n live decayed counts (>= 0) of texts not labels */
    /* the answerer's own most popular completions: the n_mpc (<= QAC_MAX_MPC) labels
     * of highest popularity (> 0) that start with the prefix, ties to the lower id
     * (MPC's order: count, then text), as source QAC_SRC_MPC ahead of the texts
     * above, which then hold none of that source; 0: none (the caller gives them,
     * as it must when its popularity table holds texts that are not labels) */
    size_t n_mpc;
} qac_extra_view;

/* What comes back: up to cap rows, best first. ref[i] >= 0 is a label id; else
 * -1 - j for extra text j, or -1 - n_extra - j for history entry j. source[i]
 * is the source the answer is shown with (history, then model, fresh, mpc, session,
 * suffix, word, words, typo: the first that made it), sources[i] the bitmask of all that made
 * it. The rows' texts, joined by '\n', go to text (text_len bytes written) when
 * text is non-NULL; QAC_E_CAPACITY if they do not fit in text_cap. With collapse
 * non-zero, near-duplicates are one answer (qac_variant_key: the same words but for
 * spacing, punctuation, web decorations and a plural s): the best-ranked one holds
 * the place, shown as the user's own variant if they issued one. With features
 * non-NULL (features_cap >= cap * QAC_NF), every row of the pool comes back, in
 * pool order rather than best first, with its feature row: the fitting path. *n is
 * set to the rows written. */
typedef struct {
    int32_t *ref; int32_t *source; uint32_t *sources; double *score; size_t cap;
    int32_t *edits; /* NULL, or cap: each answer's typo corrections (0: none) */
    /* NULL, or cap * 2 * QAC_MAX_SPANS: answer i's highlight spans, what matched the
     * typed text, as code-point offsets [start, end) into its text, pairs from
     * spans[2 * QAC_MAX_SPANS * i]; n_spans (cap) how many (see qac_answer) */
    int32_t *spans; int32_t *n_spans;
    double *features; size_t features_cap;
    char *text; size_t text_cap; size_t text_len;
    int collapse;
    size_t n;
    size_t visited; /* trie nodes the typo search visited */
} qac_answer_out;

/* Matching beyond the labels that start with the prefix, done only when those are
 * fewer than the answers asked for (a correction never pushes one of them down):
 *   - words (non-zero): word-prefix matches, each typed word the start of successive
 *     words of a label or past query ("app wat": "apple watch"; "york": "new york
 *     times"), most popular first;
 *   - typos (0..2): labels and past queries whose beginning is within this many
 *     edits of the prefix (Damerau: insert, delete, change or swap neighbours, over
 *     code points), most popular first: 0 for prefixes under one_typo_chars
 *     characters or over QAC_FUZZY_MAX_CHARS, 1 under two_typo_chars, else typos;
 *     fewer edits first; first_char non-zero lets the first code point change;
 *   - at most `fuzzy` labels from each (past queries: all that match);
 *   - max_visits bounds the trie nodes the typo search visits (out->visited).
 * The groups, in order (the ranker orders within one): the prefix's own answers;
 * the word-prefix matches (with the former when there are none); one-edit
 * corrections; then, for a prefix that is several words of which no label
 * starts with the ones before the last (a damaged head), the generated guesses
 * (session, suffix and word candidates that are no label: texts nobody issued; they
 * do not count as the prefix's own answers); two-edit corrections. */
typedef struct {
    int words;
    int typos;
    size_t one_typo_chars, two_typo_chars;
    int first_char;
    size_t fuzzy;
    size_t max_visits;
} qac_match_view;

/* The key that names a text's near-duplicates: its words (runs of letters and
 * digits; bytes of 0x80 and up count as letters) without "www", "http", "https",
 * "com", "net", "org", "html", "htm", and after the first word without a lone "s"
 * (a possessive) or "and" (what "&" spells), each with a trailing "s" dropped (not
 * after "s", "u" or "i", nor from a word of 3 letters or fewer), joined with
 * nothing, then hashed. "woot" / "woot.com", "dress up" / "dressup", "yahoo groups"
 * / "yahoo group", "ebay com" / "ebay . com", "macys" / "macy's", "barnes & noble" /
 * "barnes and noble" share a key. */
uint64_t qac_variant_key(const char *text, size_t len);

/* Wrap what a keystroke needs. The handle keeps the pointers (the caller keeps
 * every array alive and unchanged); it checks them once, in O(labels + nodes):
 * QAC_E_RANGE for arrays that disagree (unsorted labels, offsets out of the text,
 * negative popularity, a word-start index other than qac_words_index's, a child
 * table other than qac_child_table's, a tree child or feature out of range, a
 * cycle), QAC_E_INPUT for NULL pointers or a child table of the wrong size.
 * featurizer and model may be NULL (no beam search: a model with no labels to
 * search). */
int qac_answerer_new(const qac_featurizer_t *featurizer, const qac_model_t *model,
                     const qac_labels_view *labels, const qac_forest_view *forest,
                     qac_answerer_t **out);
void qac_answerer_free(qac_answerer_t *answerer);

/* Per-thread working memory: pools of up to max_rows rows, beams up to max_beam
 * wide with up to max_model answers, previous queries up to max_prev bytes. */
int qac_answer_scratch_new(const qac_answerer_t *answerer, size_t max_rows, size_t max_beam,
                           size_t max_model, size_t max_prev, qac_answer_scratch_t **out);
void qac_answer_scratch_free(qac_answer_scratch_t *scratch);

/* The label ids [*lo, *hi) of the labels that start with prefix. */
int qac_label_range(const qac_answerer_t *answerer, const char *prefix, size_t prefix_len,
                    int64_t *lo, int64_t *hi);

/* One keystroke (see the top of this header). beam: beam width; n_model: beam
 * answers put into the pool (0: no search). match: NULL for the prefix's own
 * answers only, else see qac_match_view. Highlight spans (out->spans): over the
 * typed prefix (with its finished word's space) for an answer that starts with it;
 * else, without corrections, over the start of each word the typed words began
 * (the first run of successive words that do); else, for a correction, over the
 * characters equal to the typed ones they align with (Damerau, over code points,
 * the fewest edits); else none (an empty prefix, a next query). QAC_E_CAPACITY
 * when the scratch or out is too small for the pool (out->n is then 0 and nothing is half-written
 * that a caller could mistake for an answer). */
int qac_answer(const qac_answerer_t *answerer, qac_answer_scratch_t *scratch,
               const char *prefix, size_t prefix_len, const qac_context_view *context,
               const qac_extra_view *extra, size_t beam, size_t n_model,
               const qac_match_view *match, qac_answer_out *out);
/* QAC_CDEF_END */

#endif

/* The fused per-query path: one crossing from Python does featurize + search. */
#include "qac.h"

int qac_predict_text(const qac_featurizer_t *featurizer, const qac_model_t *model,
                     qac_scratch_t *scratch, const char *text, size_t text_len,
                     const char *context, size_t context_len, size_t beam, size_t topk,
                     int64_t lo, int64_t hi, int32_t *feat_idx, float *feat_val,
                     size_t feat_cap, int32_t *out_ids, float *out_scores, size_t out_cap,
                     size_t *out_n) {
    if (!featurizer || !model || !scratch || !out_n) return QAC_E_INPUT;
    *out_n = 0;
    size_t n_blocks = 0, n_feat = 0, nnz = 0;
    int rc = qac_featurizer_info(featurizer, &n_blocks, &n_feat);
    if (rc) return rc;
    size_t depth = 0;
    int64_t n_labels = 0, model_features = 0;
    rc = qac_model_info(model, &depth, &n_labels, &model_features);
    if (rc) return rc;
    if ((int64_t)n_feat > model_features) return QAC_E_RANGE;
    rc = qac_featurize2(featurizer, text, text_len, context, context_len, feat_idx, feat_val,
                        feat_cap, &nnz);
    if (rc) return rc;
    return qac_model_predict(model, scratch, feat_idx, feat_val, nnz, beam, topk, lo, hi,
                             out_ids, out_scores, out_cap, out_n);
}

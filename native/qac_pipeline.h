/* qac native kernel: the fused per-query path (featurize + beam search). */
#ifndef QAC_PIPELINE_H
#define QAC_PIPELINE_H

#include <stddef.h>
#include <stdint.h>

/* QAC_CDEF_BEGIN */
/* Featurize (text, context) and beam-search the model in one call: the whole
 * per-keystroke path of the engine. feat_idx/feat_val are caller-owned scratch
 * of feat_cap entries (qac_featurize_max_capacity of the featurizer is always
 * enough); scratch is the calling thread's qac_scratch_t. Either text may be
 * NULL with length 0. Label ids are restricted to [lo, hi) as in
 * qac_model_predict; out_ids / out_scores hold out_cap entries each
 * (QAC_E_CAPACITY when topk > out_cap). The featurizer's feature ids must be
 * < the model's n_features (QAC_E_RANGE otherwise). */
int qac_predict_text(const qac_featurizer_t *featurizer, const qac_model_t *model,
                     qac_scratch_t *scratch, const char *text, size_t text_len,
                     const char *context, size_t context_len, size_t beam, size_t topk,
                     int64_t lo, int64_t hi, int32_t *feat_idx, float *feat_val,
                     size_t feat_cap, int32_t *out_ids, float *out_scores, size_t out_cap,
                     size_t *out_n);
/* QAC_CDEF_END */

#endif

/*
 * qac native kernel: the ABI, single source of truth.
 *
 * native/build_ffi.py feeds every block between QAC_CDEF_BEGIN and QAC_CDEF_END
 * (in this file and in the part headers included below, in order) to cffi's
 * cdef; `#define NAME value` lines there become `#define NAME ...` so the
 * compiler supplies the values.
 *
 * Conventions: functions are `int qac_<verb>_<noun>(...)`, return QAC_OK or a
 * negative QAC_E_* code, take inputs as const pointers with explicit lengths,
 * write into caller-owned buffers, never print, never exit, keep no globals.
 * Long-lived state is an opaque handle freed by its qac_*_free function.
 */
#ifndef QAC_H
#define QAC_H

#include <stddef.h>
#include <stdint.h>

/* QAC_CDEF_BEGIN */
#define QAC_ABI_VERSION 4

#define QAC_OK 0
#define QAC_E_NOMEM -1    /* allocation failed */
#define QAC_E_INPUT -2    /* bad argument: NULL pointer, negative size, bad option */
#define QAC_E_RANGE -3    /* an index out of range: corrupt or mismatched arrays */
#define QAC_E_CAPACITY -4 /* the caller's output buffer is too small */
#define QAC_E_UTF8 -5     /* text is not valid UTF-8 */
#define QAC_E_THREAD -6   /* a worker thread could not be started */

int qac_abi_version(void);
const char *qac_strerror(int code);
/* QAC_CDEF_END */

#include "qac_features.h"
#include "qac_infer.h"
#include "qac_train.h"
#include "qac_kmeans.h"
#include "qac_pipeline.h"
#include "qac_answer.h"

#endif /* QAC_H */

/* qac native kernel: infer. Part of the ABI declared by qac.h. */
#ifndef QAC_INFER_H
#define QAC_INFER_H

#include <stddef.h>
#include <stdint.h>

/* QAC_CDEF_BEGIN */
/* QAC_CDEF_END */

#endif

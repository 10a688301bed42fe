/* qac native kernel: features. Part of the ABI declared by qac.h. */
#ifndef QAC_FEATURES_H
#define QAC_FEATURES_H

#include <stddef.h>
#include <stdint.h>

/* QAC_CDEF_BEGIN */
/* QAC_CDEF_END */

#endif

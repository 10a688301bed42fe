/* qac native kernel: train. Part of the ABI declared by qac.h. */
#ifndef QAC_TRAIN_H
#define QAC_TRAIN_H

#include <stddef.h>
#include <stdint.h>

/* QAC_CDEF_BEGIN */
/* QAC_CDEF_END */

#endif

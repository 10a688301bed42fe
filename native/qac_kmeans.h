/* qac native kernel: kmeans. Part of the ABI declared by qac.h. */
#ifndef QAC_KMEANS_H
#define QAC_KMEANS_H

#include <stddef.h>
#include <stdint.h>

/* QAC_CDEF_BEGIN */
/* QAC_CDEF_END */

#endif

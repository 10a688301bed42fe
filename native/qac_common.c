#include "qac.h"

int qac_abi_version(void) { return QAC_ABI_VERSION; }

const char *qac_strerror(int code) {
    switch (code) {
    case QAC_OK: return "ok";
    case QAC_E_NOMEM: return "out of memory";
    case QAC_E_INPUT: return "invalid argument";
    case QAC_E_RANGE: return "index out of range (corrupt or mismatched arrays)";
    case QAC_E_CAPACITY: return "output buffer too small";
    case QAC_E_UTF8: return "text is not valid UTF-8";
    case QAC_E_THREAD: return "could not start a worker thread";
    default: return "unknown error";
    }
}

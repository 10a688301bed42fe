"""The C boundary itself: ABI version, error codes and their Python exceptions."""

import pytest

from qac import _kernel
from qac.errors import InputError, KernelError


def test_abi_version_matches_python_side() -> None:
    assert _kernel.abi_version() == _kernel.ABI_VERSION


def test_status_codes_map_to_typed_exceptions() -> None:
    lib = _kernel.lib
    _kernel.check(lib.QAC_OK, "ok")
    with pytest.raises(InputError, match="invalid argument"):
        _kernel.check(lib.QAC_E_INPUT, "op")
    with pytest.raises(InputError, match="UTF-8"):
        _kernel.check(lib.QAC_E_UTF8, "op")
    with pytest.raises(MemoryError):
        _kernel.check(lib.QAC_E_NOMEM, "op")
    with pytest.raises(KernelError) as info:
        _kernel.check(lib.QAC_E_RANGE, "op")
    assert info.value.code == lib.QAC_E_RANGE
    assert "out of range" in str(info.value)


def test_every_code_has_its_own_message() -> None:
    lib = _kernel.lib
    codes = [lib.QAC_E_NOMEM, lib.QAC_E_INPUT, lib.QAC_E_RANGE, lib.QAC_E_CAPACITY,
             lib.QAC_E_UTF8, lib.QAC_E_THREAD]
    texts = {_kernel.ffi.string(lib.qac_strerror(c)) for c in codes}
    assert len(texts) == len(codes)
    assert _kernel.ffi.string(lib.qac_strerror(-999)) == b"unknown error"

"""The engines' status codes (native/bunet_status.h): one table, the same codes in both cffi modules,
each raised as its own exception with a message that names the call and the cause."""

from __future__ import annotations

import pytest

from bunet import native_errors as ne
from bunet.gc import _native as gc_native
from bunet.he import _native as he_native
from bunet.he.params import _candidates
from bunet.he.rns import RNS

NAMES = ["BN_ENOMEM", "BN_EOPCODE", "BN_EINVAL", "BN_ERANDOM", "BN_EPARAMS"]


@pytest.mark.parametrize("native", [gc_native, he_native], ids=["gc", "he"])
def test_every_code_has_its_exception(native):
    lib = native.lib
    assert lib.BN_OK == 0
    ne.check(lib, lib.BN_OK, "nothing")
    codes = {getattr(lib, name) for name in NAMES}
    assert len(codes) == len(NAMES) and 0 not in codes
    seen = set()
    for name in NAMES:
        with pytest.raises(ne.NativeError, match=rf"^the call: .+ \(engine status {name}\)$") as e:
            ne.check(lib, getattr(lib, name), "the call")
        seen.add(type(e.value))
    assert len(seen) == len(NAMES)  # one exception class per code
    assert issubclass(ne.EngineMemoryError, MemoryError) and issubclass(ne.RandomSourceError, OSError)
    with pytest.raises(ne.NativeError, match="unknown engine status -99"):
        ne.check(lib, -99, "the call")


def test_codes_are_the_same_in_both_modules():
    for name in ["BN_OK", *NAMES]:
        assert getattr(gc_native.lib, name) == getattr(he_native.lib, name)


def test_he_finish_refuses_unsupported_precisions():
    """bh_finish checks its precisions before touching any buffer."""
    lib, ffi = he_native.lib, he_native.ffi
    r = RNS(_candidates(1024)[:2], 1024)
    args = ffi.new("bh_finish_args *", dict(ring_bits=24, flood_bits=0, down_bits=30, down_c0_bits=20))
    rc = lib.bh_finish(r.ctx, args, 1)
    with pytest.raises(ne.UnsupportedParametersError, match="HE finishing kernel: unsupported parameters"):
        ne.check(lib, rc, "HE finishing kernel")

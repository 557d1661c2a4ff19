"""Arrays passed to compiled code as one table of addresses: one argument instead of thirty.

numba unboxes every array argument of a call from Python (type check, data pointer, shape and
strides into a native struct), about 0.1-0.2 us each here. A Routing step makes one compiled call
with the engine's 24 arrays and the env's buffers: the crossing cost more than the simulation it
ran. :func:`address_table` writes each array's address and shape into one int64 array, and the
compiled side (:func:`f64_1`, :func:`i64_2`, ...: dtype and dimensions) views the memory again with
``numba.carray``, which allocates nothing and copies nothing.

The table is only as valid as the arrays behind it: the owner must rebuild it whenever it
replaces an array (:meth:`envs.sim.state.EngineState.address_table` does, and a pickled state
drops it), and must keep the arrays alive while the table is used. Each entry is
``ROW`` int64: address, then up to three dimensions (unused ones 1). Only C-contiguous arrays of
the dtypes below are accepted.

:func:`prefetch` is the core's other low-level hook: a cache-line hint the event loop issues for
the rows its next event will read.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from llvmlite import ir
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from envs.sim import jitcache  # noqa: F401  (installs the core's cache locator before anything compiles)

ROW = 4  #: int64 per array in a table: address, dims 0-2
_DTYPES = (np.dtype(np.float64), np.dtype(np.int64), np.dtype(np.float32), np.dtype(np.bool_))


def address_table(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """The table of ``arrays`` (C-contiguous, float64 / int64 / float32 / bool, at most 3-D)."""
    out = np.ones(ROW * len(arrays), np.int64)
    for k, a in enumerate(arrays):
        if not isinstance(a, np.ndarray) or not a.flags.c_contiguous or a.dtype not in _DTYPES or a.ndim > 3:
            raise TypeError(f"array {k}: {type(a).__name__} must be a C-contiguous float64, int64, float32 "
                            f"or bool ndarray of at most 3 dimensions")  # fmt: skip
        out[ROW * k] = a.ctypes.data
        out[ROW * k + 1 : ROW * k + 1 + a.ndim] = a.shape
    return out


def _cast(ty):
    """An intrinsic turning an int64 address into a pointer to ``ty``."""

    @intrinsic
    def cast(typingctx, addr):
        sig = types.CPointer(ty)(types.int64)

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(types.CPointer(ty)))

        return sig, codegen

    return cast


_p_f64 = _cast(types.float64)
_p_i64 = _cast(types.int64)
_p_f32 = _cast(types.float32)
_p_b1 = _cast(types.boolean)


@njit(cache=True, inline="always")
def f64_1(tab, k):
    """Entry ``k`` of ``tab`` as a 1-D float64 array."""
    j = ROW * k
    return carray(_p_f64(tab[j]), (tab[j + 1],))


@njit(cache=True, inline="always")
def f64_2(tab, k):
    """Entry ``k`` of ``tab`` as a 2-D float64 array."""
    j = ROW * k
    return carray(_p_f64(tab[j]), (tab[j + 1], tab[j + 2]))


@njit(cache=True, inline="always")
def i64_1(tab, k):
    """Entry ``k`` of ``tab`` as a 1-D int64 array."""
    j = ROW * k
    return carray(_p_i64(tab[j]), (tab[j + 1],))


@njit(cache=True, inline="always")
def i64_2(tab, k):
    """Entry ``k`` of ``tab`` as a 2-D int64 array."""
    j = ROW * k
    return carray(_p_i64(tab[j]), (tab[j + 1], tab[j + 2]))


@njit(cache=True, inline="always")
def i64_3(tab, k):
    """Entry ``k`` of ``tab`` as a 3-D int64 array."""
    j = ROW * k
    return carray(_p_i64(tab[j]), (tab[j + 1], tab[j + 2], tab[j + 3]))


@njit(cache=True, inline="always")
def f32_1(tab, k):
    """Entry ``k`` of ``tab`` as a 1-D float32 array."""
    j = ROW * k
    return carray(_p_f32(tab[j]), (tab[j + 1],))


@njit(cache=True, inline="always")
def b1_1(tab, k):
    """Entry ``k`` of ``tab`` as a 1-D bool array."""
    j = ROW * k
    return carray(_p_b1(tab[j]), (tab[j + 1],))


@intrinsic
def _p_void(typingctx, addr):
    """An int64 address as a ``void *`` (for ``carray`` with an explicit dtype)."""
    sig = types.voidptr(types.int64)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(types.voidptr))

    return sig, codegen


@njit(cache=True, inline="always")
def row(a, e):
    """Row ``e`` of the 2-D C-contiguous ``a`` as a view that carries no reference count (``a[e]``
    shares ``a``'s and updates it atomically twice, a cost that shows in a batched step taking
    several rows of each of its buffers per simulation); valid while ``a`` lives."""
    return carray(_p_void(a.ctypes.data + e * a.strides[0]), (a.shape[1],), a.dtype)


@intrinsic
def prefetch(typingctx, arr, row, col):
    """Ask the CPU to bring in the cache line holding ``arr[row, col]`` (a 2-D C-contiguous array) —
    LLVM's ``llvm.prefetch``: read, keep in all levels. A hint: it changes no value and never faults,
    so ``row`` may lie past the array's end. Issued for every row a loop is about to walk, or for
    the rows the next event will read, the misses overlap instead of coming one after another."""
    if not (isinstance(arr, types.Array) and arr.ndim == 2 and arr.layout == "C"):
        return None
    sig = types.void(arr, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1], args[2]])
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0"
        )
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen

"""A replica's paged KV memory and its prefix cache, compiled: blocks, hashed prompt blocks, LRU eviction.

Models vLLM's ``KVCacheManager`` / ``BlockPool`` (vLLM V1, ``vllm/v1/core/kv_cache_manager.py``,
``vllm/v1/core/block_pool.py``; design doc "Automatic Prefix Caching",
https://docs.vllm.ai/en/latest/design/prefix_caching.html) and SGLang's RadixAttention cache
(``python/sglang/srt/mem_cache/radix_cache.py``), at the granularity the workload knows:

* KV memory is ``Q_BLKCAP`` blocks of ``Q_BT`` tokens (``models[].kv_block_tokens``, 16 as in
  vLLM). A running request holds the blocks of the tokens computed so far, allocated as they are
  produced; the engine (:mod:`envs.sim.kernel`) preempts a request when a block is not available.
* A prompt is a chain of hashed blocks of ``hb = gi[I_HB]`` tokens (the workload's hash block:
  512 in the Mooncake trace); hash ``k`` identifies the whole prefix up to the end of block ``k``,
  like vLLM's chained block hashes, so a request reuses its longest cached prefix by looking its
  hashes up in order and stopping at the first miss. Only full blocks are cached (vLLM caches full
  blocks only); one cache *entry* is one hashed block and holds ``Q_EB = hb / Q_BT`` KV blocks.
* An entry referenced by no running request stays cached on an LRU list and is evicted (its blocks
  reused) only when an allocation needs space: vLLM's free-block queue, where cached blocks keep
  their hash until the block is reallocated. A finished request's entries are appended in reverse
  order, so its deepest blocks are evicted first (vLLM frees a request's blocks in reverse).

A request's blocks: its leading ``R_HELD`` entries (shared, reference-counted) and ``R_BLOCKS``
private blocks for the rest of its computed tokens. When a prompt block is complete, the request
*publishes* it: the block becomes an entry (or, if the same hash was cached meanwhile, the request
references that entry and frees its copy). Memory in use is ``Q_BLKPRIV + Q_ENTRIES * Q_EB``
blocks, of which ``Q_LRUN * Q_EB`` can be evicted.

The hash table is open addressing with linear probing and backward-shift deletion over
``kc[r, KC_SLOT]`` (twice the entries a replica can hold); entries live in a per-replica pool
(``KC_KEY``, ``KC_REF``, ``KC_PREV``/``KC_NEXT`` LRU links, ``KC_FREE`` free stack). Nothing here
allocates: the arrays are sized when the simulation is built.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from envs.sim import jitcache  # noqa: F401  (installs the core's cache locator before anything compiles)
from envs.sim.layout import *  # noqa: F403  (the state's field names, defined once there)

_GOLDEN = np.uint64(11400714819323198485)  # 2**64 / golden ratio: Fibonacci hashing


@njit(cache=True, error_model="numpy", inline="always")
def _home(key, mask):
    return np.int64((np.uint64(key) * _GOLDEN) >> np.uint64(32)) & mask


@njit(cache=True, error_model="numpy", inline="always")
def lookup(kc, r, key):
    """The entry of replica ``r`` holding block hash ``key``, or -1."""
    mask = kc.shape[2] - 1
    s = _home(key, mask)
    while True:
        e = kc[r, KC_SLOT, s]
        if e < 0:
            return -1
        if kc[r, KC_KEY, e] == key:
            return e
        s = (s + 1) & mask


@njit(cache=True, error_model="numpy", inline="always")
def _insert(kc, pi, r, key):
    """A new unreferenced entry for ``key`` (not cached yet), off the LRU list."""
    if pi[r, Q_CFREE] > 0:
        pi[r, Q_CFREE] -= 1
        e = kc[r, KC_FREE, pi[r, Q_CFREE]]
    else:
        e = pi[r, Q_CNEW]
        pi[r, Q_CNEW] = e + 1
    kc[r, KC_KEY, e] = key
    kc[r, KC_REF, e] = 0
    kc[r, KC_PREV, e] = -1
    kc[r, KC_NEXT, e] = -1
    mask = kc.shape[2] - 1
    s = _home(key, mask)
    while kc[r, KC_SLOT, s] >= 0:
        s = (s + 1) & mask
    kc[r, KC_SLOT, s] = e
    pi[r, Q_ENTRIES] += 1
    return e


@njit(cache=True, error_model="numpy", inline="always")
def _remove(kc, pi, r, e):
    """Forget entry ``e`` (unreferenced, off the LRU list): backward-shift deletion, no tombstones."""
    mask = kc.shape[2] - 1
    s = _home(kc[r, KC_KEY, e], mask)
    while kc[r, KC_SLOT, s] != e:
        s = (s + 1) & mask
    j = s
    while True:
        j = (j + 1) & mask
        f = kc[r, KC_SLOT, j]
        if f < 0:
            break
        h = _home(kc[r, KC_KEY, f], mask)
        # f may move back to s unless its home lies cyclically in (s, j]
        if (s < j and (h <= s or h > j)) or (s > j and h <= s and h > j):
            kc[r, KC_SLOT, s] = f
            s = j
    kc[r, KC_SLOT, s] = -1
    kc[r, KC_KEY, e] = -1
    kc[r, KC_FREE, pi[r, Q_CFREE]] = e
    pi[r, Q_CFREE] += 1
    pi[r, Q_ENTRIES] -= 1


@njit(cache=True, error_model="numpy", inline="always")
def _lru_append(kc, pi, r, e):
    t = pi[r, Q_LRUT]
    kc[r, KC_PREV, e] = t
    kc[r, KC_NEXT, e] = -1
    if t < 0:
        pi[r, Q_LRUH] = e
    else:
        kc[r, KC_NEXT, t] = e
    pi[r, Q_LRUT] = e
    pi[r, Q_LRUN] += 1


@njit(cache=True, error_model="numpy", inline="always")
def _lru_unlink(kc, pi, r, e):
    p, n = kc[r, KC_PREV, e], kc[r, KC_NEXT, e]
    if p < 0:
        pi[r, Q_LRUH] = n
    else:
        kc[r, KC_NEXT, p] = n
    if n < 0:
        pi[r, Q_LRUT] = p
    else:
        kc[r, KC_PREV, n] = p
    pi[r, Q_LRUN] -= 1


@njit(cache=True, error_model="numpy", inline="always")
def free_blocks(pi, r):
    """Blocks no request and no cache entry holds."""
    return pi[r, Q_BLKCAP] - pi[r, Q_BLKPRIV] - pi[r, Q_ENTRIES] * pi[r, Q_EB]


@njit(cache=True, error_model="numpy", inline="always")
def available_blocks(pi, r):
    """Blocks an allocation can get: free ones plus those of unreferenced (evictable) entries."""
    return free_blocks(pi, r) + pi[r, Q_LRUN] * pi[r, Q_EB]


@njit(cache=True, error_model="numpy", inline="always")
def sync_kv_tokens(pi, r):
    """``Q_KVRES``: KV tokens held by running requests (vLLM's KV-cache usage; evictable entries are free)."""
    pi[r, Q_KVRES] = (pi[r, Q_BLKPRIV] + (pi[r, Q_ENTRIES] - pi[r, Q_LRUN]) * pi[r, Q_EB]) * pi[r, Q_BT]


@njit(cache=True, error_model="numpy", inline="always")
def allocate(kc, pi, r, n):
    """Take ``n`` private blocks, evicting least-recently-used entries as needed; False if they do not fit."""
    if n <= 0:
        return True
    if n > available_blocks(pi, r):
        return False
    while free_blocks(pi, r) < n:
        e = pi[r, Q_LRUH]
        _lru_unlink(kc, pi, r, e)
        _remove(kc, pi, r, e)
    pi[r, Q_BLKPRIV] += n
    return True


@njit(cache=True, error_model="numpy", inline="always")
def cdiv(a, b):
    """ceil(a / b) for b > 0. The default block size (16) takes a shift: the paged engine divides by the
    block size for every running request at every iteration, and a 64-bit division by a value known
    only at run time costs tens of cycles; (a + 15) >> 4 is the same integer for every a."""
    if b == 16:
        return (a + 15) >> 4
    return -((-a) // b)


@njit(cache=True, error_model="numpy", inline="always")
def full_prompt_blocks(ri, pc, gi, i):
    """Hashed blocks of request ``i``'s prompt that are full (the cacheable ones)."""
    return min(pc[i + 1] - pc[i], ri[i, R_PROMPT] // gi[I_HB]) if gi[I_HB] > 0 else 0


@njit(cache=True, error_model="numpy", inline="always")
def match(ri, pi, pc, kc, gi, r, i, tokens):
    """``(entries, evictable)``: request ``i``'s longest cached prefix on replica ``r`` in entries,
    at most ``(tokens - 1) // hb`` (a full hit still computes its last token, as vLLM does), and
    how many of those entries are unreferenced (they stop being evictable once held)."""
    if pi[r, Q_CACHE] == 0:
        return 0, 0
    limit = min(full_prompt_blocks(ri, pc, gi, i), (tokens - 1) // gi[I_HB])
    base = pc[i]
    k = 0
    idle = 0
    while k < limit:
        e = lookup(kc, r, pc[base + k])
        if e < 0:
            break
        if kc[r, KC_REF, e] == 0:
            idle += 1
        k += 1
    return k, idle


@njit(cache=True, error_model="numpy", inline="always")
def hold(ri, pi, pc, kc, r, i, k):
    """Reference request ``i``'s first ``k`` blocks' entries (found by :func:`match`)."""
    base = pc[i]
    for j in range(k):
        e = lookup(kc, r, pc[base + j])
        if kc[r, KC_REF, e] == 0:
            _lru_unlink(kc, pi, r, e)
        kc[r, KC_REF, e] += 1
    ri[i, R_HELD] = k


@njit(cache=True, error_model="numpy", inline="always")
def publish(ri, pi, pc, kc, gi, r, i):
    """Turn request ``i``'s completed prompt blocks (beyond those it holds) into cache entries."""
    if pi[r, Q_CACHE] == 0:
        return
    hb = gi[I_HB]
    done = min(min(ri[i, R_COMPUTED], ri[i, R_PROMPT]) // hb, full_prompt_blocks(ri, pc, gi, i))
    base = pc[i]
    eb = pi[r, Q_EB]
    for j in range(ri[i, R_HELD], done):
        key = pc[base + j]
        e = lookup(kc, r, key)
        if e < 0:
            e = _insert(kc, pi, r, key)  # its blocks move from the request to the entry
        elif kc[r, KC_REF, e] == 0:
            _lru_unlink(kc, pi, r, e)  # cached meanwhile by another request: share it, free the copy
        kc[r, KC_REF, e] += 1
        ri[i, R_BLOCKS] -= eb
        pi[r, Q_BLKPRIV] -= eb
        ri[i, R_HELD] = j + 1


@njit(cache=True, error_model="numpy", inline="always")
def release(ri, pi, pc, kc, r, i):
    """Free request ``i``'s private blocks; its entries stay cached, deepest first in eviction order."""
    pi[r, Q_BLKPRIV] -= ri[i, R_BLOCKS]
    ri[i, R_BLOCKS] = 0
    base = pc[i]
    for j in range(ri[i, R_HELD] - 1, -1, -1):
        e = lookup(kc, r, pc[base + j])
        kc[r, KC_REF, e] -= 1
        if kc[r, KC_REF, e] == 0:
            _lru_append(kc, pi, r, e)
    ri[i, R_HELD] = 0

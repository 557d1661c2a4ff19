"""numba's on-disk cache, keyed on the whole compiled core instead of one source file.

numba decides whether a cached compilation is still valid from the modification
time and size of the file that defines the function. The compiled core's
functions read constants (the state layout, routing rules) from other files of
the core, so editing :mod:`envs.sim.layout` would leave stale machine code
behind. This locator, installed before any core module compiles, keys the cache
of the core's files on a hash of all of them (and likewise for each group in
:data:`GROUPS`, such as the Placement env's compiled step). It uses numba's cache-locator
extension point (``numba.core.caching.CacheImpl._locator_classes``), which is
internal: checked with numba 0.60-0.68.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from numba.core import caching

_HERE = Path(__file__).resolve().parent
#: The files whose compiled functions share one cache key.
CORE_FILES = (
    "layout.py",
    "kernel.py",
    "eventq.py",
    "paged.py",
    "kvcache.py",
    "routing.py",
    "features.py",
    "window.py",
    "faults.py",
    "batch.py",
    "ptrs.py",
    "jitcache.py",
)


#: Other groups of files whose compiled functions read each other's constants: the Placement env's
#: compiled jobs step (its array layout, the step, the episodes' encoding).
GROUPS: dict[Path, tuple[str, ...]] = {
    _HERE: CORE_FILES,
    _HERE.parent / "placement": ("layout.py", "fast.py", "fragments.py", "episodes.py"),
}


def core_fingerprint(folder: Path = _HERE) -> str:
    """A hash of every file of ``folder``'s group (default: the simulator core)."""
    h = hashlib.sha256()
    for name in GROUPS[folder]:
        path = folder / name
        if path.exists():
            h.update(path.read_bytes())
    return h.hexdigest()


_BASE = caching.UserProvidedCacheLocator if caching.config.CACHE_DIR else caching.InTreeCacheLocator


class _CoreLocator(_BASE):
    _fingerprints: dict[Path, str] = {}

    @classmethod
    def from_function(cls, py_func, py_file):  # noqa: ANN001, ANN206  (numba's signature)
        path = Path(py_file).resolve()
        if path.name not in GROUPS.get(path.parent, ()):
            return None
        out = super().from_function(py_func, py_file)
        out._group = path.parent
        return out

    def get_source_stamp(self):  # noqa: ANN201
        group = self._group
        if group not in _CoreLocator._fingerprints:
            _CoreLocator._fingerprints[group] = core_fingerprint(group)
        return _CoreLocator._fingerprints[group]


def install() -> None:
    """Put the core's locator first (idempotent)."""
    classes = caching.CacheImpl._locator_classes
    if _CoreLocator not in classes:
        classes.insert(0, _CoreLocator)


install()

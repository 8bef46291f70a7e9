"""The ranker's tree predictions: LightGBM's own ``predict``, or the same trees compiled to
native code.

Served scoring sends every user's candidates through the ranker's boosters: on Amazon Beauty,
2.2 million rows through 1,124 trees, which was 70% of the served path's time in LightGBM's
``predict`` (BENCHMARKS.md, "The served path"). `lleaves <https://github.com/siboehm/lleaves>`_
compiles a LightGBM model text with LLVM (one function per tree, cache-blocked) and predicts the
same values several times faster. The two agree to the last bits of a double sum, not bit for
bit (they add the trees in a different order), so which one a model uses is decided by the
model alone, never by timing or load: a night and its re-run publish the same scores. A model
of at least :data:`COMPILE_MIN_TREES` trees is compiled; a smaller one stays on LightGBM, whose
cost there is less than the compile's.

A compiled model is cached on local disk (:func:`cache_dir`), keyed by the model text, the
compiler's versions and the host CPU (the code is specialised for it), and written atomically:
a later night, a Spark worker or a concurrent process on the same machine loads it in a moment.
Without lleaves, or when compiling fails, the model stays on LightGBM and the log says why;
``ECREC_COMPILE_TREES=0`` keeps every model on LightGBM.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Trees from which a booster is compiled: the compile costs ~0.05 s per tree (cached after),
# LightGBM ~20 ns per tree and row; a served ranker has hundreds of trees over millions of rows,
# a test's ranker a few dozen over a few hundred.
COMPILE_MIN_TREES = 100
CACHE_ENV = "ECREC_COMPILED_TREES_DIR"
# "0" / "false" / "off": every booster predicts through LightGBM (an operator's switch, and the
# benchmark's side-by-side baseline)
SWITCH_ENV = "ECREC_COMPILE_TREES"


def compiling_enabled() -> bool:
    """False when ``$ECREC_COMPILE_TREES`` is 0, false or off."""
    return os.environ.get(SWITCH_ENV, "").strip().lower() not in {"0", "false", "off", "no"}


def cache_dir() -> Path:
    """Where compiled boosters are kept: ``$ECREC_COMPILED_TREES_DIR``, else
    ``$XDG_CACHE_HOME/ecrec/compiled_trees`` (``~/.cache`` when unset)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ecrec" / "compiled_trees"


def _host_key() -> str:
    from importlib.metadata import version

    import llvmlite
    import llvmlite.binding as llvm

    return "|".join((version("lleaves"), llvmlite.__version__, llvm.get_host_cpu_name(),
                     llvm.get_host_cpu_features().flatten()))


class TreePredictor:
    """One LightGBM booster's predictions (raw scores, float64), compiled when it has at least
    ``min_trees`` trees and lleaves can compile it; ``compiled`` says which path serves."""

    def __init__(self, booster: Any, min_trees: int = COMPILE_MIN_TREES,
                 cache: Path | None = None) -> None:
        self.booster = booster
        self.cache = cache
        self._compiled: Any = None
        self.why_not_compiled = ""
        if booster.num_trees() < min_trees:
            self.why_not_compiled = f"{booster.num_trees()} trees < {min_trees}"
        elif not compiling_enabled():
            self.why_not_compiled = f"${SWITCH_ENV} is off"
        else:
            self._try_compile()

    def _try_compile(self) -> None:
        """Compile (or load) the booster; on failure LightGBM serves and the log says why."""
        try:
            self._compiled = _compile(self.booster.model_to_string(), self.cache or cache_dir())
        except ImportError:
            self.why_not_compiled = "lleaves is not installed"
        except Exception as exc:  # a compiler failure must not stop scoring: LightGBM serves
            self.why_not_compiled = f"compiling failed: {type(exc).__name__}: {exc}"
        if self._compiled is None:
            log.warning("ranker booster of %d trees predicts through LightGBM (%s): slower, "
                        "same ranking", self.booster.num_trees(), self.why_not_compiled)

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def predict(self, x: np.ndarray, threads: int) -> np.ndarray:
        """Raw scores of the rows of ``x`` (rows, features), float64."""
        if self._compiled is not None:
            return self._compiled.predict(np.ascontiguousarray(x, dtype=np.float64),
                                          n_jobs=threads)
        return np.asarray(self.booster.predict(x, num_threads=threads), dtype=np.float64)

    def __getstate__(self) -> dict[str, Any]:
        # the compiled code is a process's executable memory: a copy (a Spark task's pickle)
        # re-loads it from the cache on this machine, or compiles it there
        state = self.__dict__.copy()
        state["_compiled"] = None
        state["_was_compiled"] = self._compiled is not None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        was = state.pop("_was_compiled", False)
        self.__dict__.update(state)
        if was:
            self._try_compile()


def _compile(model_text: str, cache: Path) -> Any:
    """The lleaves model of ``model_text``, from ``cache`` or compiled into it atomically."""
    import lleaves  # noqa: F401 - ImportError before any cache file is touched

    key = hashlib.sha256((_host_key() + "\n" + model_text).encode()).hexdigest()[:32]
    cache.mkdir(parents=True, exist_ok=True)
    binary = cache / f"{key}.o"
    # one compiler per model and machine: the Spark workers of a night wait for the first
    # one's binary instead of each compiling the same trees
    with open(cache / f".{key}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _compile_locked(model_text, cache, binary)


def _compile_locked(model_text: str, cache: Path, binary: Path) -> Any:
    import lleaves

    with tempfile.TemporaryDirectory(dir=cache, prefix=".compile-") as tmp:
        model_file = Path(tmp) / "model.txt"
        model_file.write_text(model_text)
        model = lleaves.Model(model_file=str(model_file))
        if binary.is_file():
            model.compile(cache=str(binary))
            return model
        staged = Path(tmp) / binary.name
        model.compile(cache=str(staged))
        os.replace(staged, binary)
    log.info("compiled a ranker booster of %d trees to %s", model.num_trees(), binary)
    return model

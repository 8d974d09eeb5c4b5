"""Integer arguments of the clustering functions (k, seeds, iterations, sizes), taken as Python ints."""

from __future__ import annotations

import operator


def integer(value, name: str) -> int:
    """``value`` as a Python int, numpy integers included; ``ValueError`` for anything else (floats, bools).

    Until 2026-12-03 faiss refused a numpy k or iters with a SWIG TypeError, a numpy int64 seed overflowed in the
    seed's modulo (OverflowError), and a float epoch_size or k failed later with a TypeError, far from its cause.
    """
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise ValueError(f"{name} must be an integer, got {value!r}")

"""The dynamic hard-negative mining rule of Conan-Embedding (arXiv 2408.15710, §3.2), as pure functions.

Every example records S_initial, the mean cosine between its query and its hard negatives when they
were assigned, and S_now, the same mean as training last saw it. A set is *exhausted* (the model has
learned to push it away) when::

    ratio · S_now < S_initial  and  |S_now| < abs_max          (paper: ratio 1.15, abs_max 0.8)

and is then replaced by the next window of the example's ranked candidates: the i-th window holds the
candidates ranked ``(i-1)·n + skip`` .. ``i·n + skip`` (0-based, end exclusive; n negatives per example,
skip = 10 top-ranked candidates never used, since unlabelled positives crowd the top of a ranking).
"""

from __future__ import annotations

import numpy as np


def is_exhausted(initial, current, ratio: float = 1.15, abs_max: float = 0.8, *, absolute: bool = True):
    """True where ``ratio * current < initial and abs(current) < abs_max`` (scalars or arrays; NaN -> False).

    ``absolute=False`` compares ``current < abs_max`` instead (Conan-embedding-v2's form: ``S_now < 0.7``).

    >>> is_exhausted(0.6, 0.5), is_exhausted(0.6, 0.53)
    (True, False)
    >>> is_exhausted([0.9, 0.9], [0.7, 0.79]).tolist()
    [True, False]
    """
    initial, current = np.asarray(initial, dtype=np.float64), np.asarray(current, dtype=np.float64)
    small = (np.abs(current) if absolute else current) < abs_max
    with np.errstate(invalid="ignore"):
        out = (ratio * current < initial) & small
    return bool(out) if out.ndim == 0 else out


def negative_window(i: int, n: int, skip: int = 10) -> range:
    """The 0-based candidate ranks of the i-th window (i >= 1) of n negatives, after the top `skip`.

    >>> negative_window(1, 7), negative_window(2, 7)
    (range(10, 17), range(17, 24))
    """
    if i < 1 or n < 1 or skip < 0:
        raise ValueError(f"negative_window needs i >= 1, n >= 1 and skip >= 0, got i={i}, n={n}, skip={skip}")
    return range((i - 1) * n + skip, i * n + skip)

"""The dynamic hard-negative mining rule of Conan-Embedding (arXiv 2408.15710, §3.2), as pure functions.

Every example records S_initial, the mean cosine between its query and its hard negatives when they
were assigned, and S_now, the same mean as training last saw it. A set is *exhausted* (the model has
learned to push it away) when::

    ratio · S_now < S_initial  and  |S_now| < abs_max          (paper: ratio 1.15, abs_max 0.8)

(the first condition generalised to S_initial <= 0, see `is_exhausted`), and is then replaced by the next window of the example's ranked candidates: the i-th window holds the
candidates ranked ``(i-1)·n + skip`` .. ``i·n + skip`` (0-based, end exclusive; n negatives per example,
skip = 10 top-ranked candidates never used, since unlabelled positives crowd the top of a ranking).
"""

from __future__ import annotations

import numpy as np


def is_exhausted(initial, current, ratio: float = 1.15, abs_max: float = 0.8, *, absolute: bool = True):
    """True where S_now fell below S_initial by the rule's margin and is small (scalars or arrays; NaN -> False)::

        S_now < S_initial - (1 - 1/ratio) * |S_initial|   and   |S_now| < abs_max

    For S_initial > 0 the first condition is the paper's ``ratio * S_now < S_initial``. Written as a drop by
    a share of |S_initial| it also holds where S_initial <= 0, at which the literal formula flags an unchanged
    set (1.15 * s < s for every s < 0) and would replace it at every check without anything learned.
    ``absolute=False`` compares ``current < abs_max`` instead (Conan-embedding-v2's form: ``S_now < 0.7``).

    >>> is_exhausted(0.6, 0.5), is_exhausted(0.6, 0.53), is_exhausted(-0.2, -0.2), is_exhausted(-0.2, -0.3)
    (True, False, False, True)
    >>> is_exhausted([0.9, 0.9], [0.7, 0.79]).tolist()
    [True, False]
    """
    initial, current = np.asarray(initial, dtype=np.float64), np.asarray(current, dtype=np.float64)
    small = (np.abs(current) if absolute else current) < abs_max
    with np.errstate(invalid="ignore"):
        out = (current < initial - (1.0 - 1.0 / ratio) * np.abs(initial)) & small
    return bool(out) if out.ndim == 0 else out


def loss_weight_fell(initial, current, positive_initial, positive, temperature: float, weight_drop: float = 2.0):
    """True where the set's weight in the InfoNCE denominator relative to the positive,
    ``exp((S_now - S_positive) / temperature)``, fell by ``weight_drop`` since the set was first seen: its
    margin to the positive grew by more than ``temperature * ln(weight_drop)`` (the `loss-weight` rule,
    ours; arrays; NaN -> False).

    >>> loss_weight_fell([0.8, 0.8], [0.76, 0.77], [0.9, 0.9], [0.9, 0.9], 0.05).tolist()  # margin +0.04, +0.03
    [True, False]
    """
    with np.errstate(invalid="ignore"):
        grown = (np.asarray(positive) - np.asarray(current)) - (np.asarray(positive_initial) - np.asarray(initial))
        return grown > temperature * np.log(weight_drop)


def negative_window(i: int, n: int, skip: int = 10) -> range:
    """The 0-based candidate ranks of the i-th window (i >= 1) of n negatives, after the top `skip`.

    >>> negative_window(1, 7), negative_window(2, 7)
    (range(10, 17), range(17, 24))
    """
    if i < 1 or n < 1 or skip < 0:
        raise ValueError(f"negative_window needs i >= 1, n >= 1 and skip >= 0, got i={i}, n={n}, skip={skip}")
    return range((i - 1) * n + skip, i * n + skip)


def false_negative_limit(positive, relative_margin: float | None = None, absolute_margin: float | None = None):
    """The highest cosine a candidate may have and still be used as a negative of a query whose positive
    scores `positive` (scalar or array): ``positive - relative_margin * |positive|`` (NV-Retriever's
    TopK-PercPos at 1 - relative_margin, e.g. 95 % of the positive's score; sentence-transformers'
    `relative_margin`) and ``positive - absolute_margin``, whichever is lower; +inf where both are None.
    A candidate scoring above it is likely an unlabelled positive (a false negative).

    >>> [round(float(false_negative_limit(*args)), 6) for args in ((0.8, 0.05), (0.8, 0.05, 0.1), (-0.2, 0.5), (0.5,))]
    [0.76, 0.7, -0.3, inf]
    """
    positive = np.asarray(positive, dtype=np.float64)
    limit = np.full(positive.shape, np.inf)
    if relative_margin is not None:
        limit = np.minimum(limit, positive - relative_margin * np.abs(positive))
    if absolute_margin is not None:
        limit = np.minimum(limit, positive - absolute_margin)
    return limit

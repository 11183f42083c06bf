"""The paper's rule as pure functions, at and around their boundaries."""

from __future__ import annotations

import numpy as np
import pytest

from conan_embed.mining import is_exhausted, negative_window


@pytest.mark.parametrize("initial, current, expected", [
    (0.6901, 0.6, True),        # 1.15 * 0.6 = 0.69
    (0.6899, 0.6, False),
    (0.5, 0.6, False),          # the score rose
    (0.9, 0.79, False),         # 1.15 * 0.79 = 0.9085 > 0.9
    (0.9, 0.78, True),          # 0.897 < 0.9
    (1.5, 0.8, False),          # |S_now| = 0.8 is not < 0.8
    (1.5, 0.7999, True),
    (0.1, -0.1, True),          # 1.15 * -0.1 = -0.115 < 0.1
    (-0.1, -0.1, False),        # negative, unchanged: not exhausted (1.15 * -0.1 < -0.1 literally)
    (-0.1, -0.1131, True),      # a drop by more than (1 - 1/1.15) = 13.04 % of |S_initial|
    (-0.1, -0.1130, False),
    (-0.5, -0.2, False),        # the score rose
    (0.0, 0.0, False),
    (0.0, -0.01, True),
    (0.9, -0.85, False),        # |-0.85| >= 0.8
    (float("nan"), 0.5, False),  # not measured yet
    (0.9, float("nan"), False),
])
def test_is_exhausted_boundaries(initial, current, expected):
    assert is_exhausted(initial, current) is expected


def test_is_exhausted_arrays_and_constants():
    initial = np.array([0.9, 0.9, 0.5, 0.5])
    current = np.array([0.7, 0.79, 0.45, 0.2])
    assert is_exhausted(initial, current).tolist() == [True, False, False, True]
    assert is_exhausted(initial, current, ratio=1.0).tolist() == [True, True, True, True]
    assert is_exhausted(initial, current, ratio=1.0, abs_max=0.3).tolist() == [False, False, False, True]
    # Conan-embedding-v2's form compares S_now itself: a very negative score counts as small
    assert is_exhausted(0.5, -0.9, ratio=1.2, abs_max=0.7) is False
    assert is_exhausted(0.5, -0.9, ratio=1.2, abs_max=0.7, absolute=False) is True


def test_negative_window():
    assert negative_window(1, 7) == range(10, 17)
    assert negative_window(2, 7) == range(17, 24)
    assert negative_window(3, 3, skip=0) == range(6, 9)
    windows = [set(negative_window(i, 4)) for i in range(1, 6)]
    assert all(a.isdisjoint(b) for k, a in enumerate(windows) for b in windows[k + 1:])  # never a rank twice
    assert min(min(w) for w in windows) == 10 and max(max(w) for w in windows) == 29  # consecutive, top 10 unused
    for bad in ((0, 7, 10), (1, 0, 10), (1, 7, -1)):
        with pytest.raises(ValueError):
            negative_window(*bad)
    assert len(negative_window(5, 7)) == 7

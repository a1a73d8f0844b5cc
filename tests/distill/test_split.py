"""The split is a stable hash of (seed, id): order-free, reproducible, close to the fractions."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from distill.pipeline import split_of


def test_split_follows_the_fractions_and_the_seed():
    ids = [f"row-{i}" for i in range(20000)]
    counts = Counter(split_of(i, 0, 0.6, 0.2) for i in ids)
    assert abs(counts["train"] / 20000 - 0.6) < 0.015
    assert abs(counts["calib"] / 20000 - 0.2) < 0.015
    assert abs(counts["test"] / 20000 - 0.2) < 0.015
    moved = sum(split_of(i, 0, 0.6, 0.2) != split_of(i, 1, 0.6, 0.2) for i in ids)
    assert moved > 5000  # another seed is another split


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=50, unique=True))
def test_a_rows_split_depends_on_nothing_but_its_id(ids):
    forward = {i: split_of(i, 3, 0.5, 0.25) for i in ids}
    backward = {i: split_of(i, 3, 0.5, 0.25) for i in reversed(ids)}
    assert forward == backward
    assert set(forward.values()) <= {"train", "calib", "test"}

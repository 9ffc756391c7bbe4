"""Tests of :class:`OrderIndex`: unit cases, a random cross-check and a model-based machine.

The reference model is a plain sorted Python list; ``rank`` is ``bisect_left`` on it. Small
``load`` values make buckets split, merge and vanish after a handful of operations, so the
bucket bookkeeping and the lazily rebuilt Fenwick tree are exercised constantly.
"""

from __future__ import annotations

import bisect
import random

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from miminions.kernel.order_index import DEFAULT_LOAD, OrderIndex

Key = tuple[float, int]


def keys_of(n: int, seed: int = 0) -> list[Key]:
    """``n`` distinct ``(order, seq)`` keys in random order, with many ties on ``order``."""
    rng = random.Random(seed)
    keys = [(float(rng.randrange(n // 3 + 1)), seq) for seq in range(n)]
    rng.shuffle(keys)
    return keys


def assert_ranks(index: OrderIndex[Key], model: list[Key]) -> None:
    """Check ``rank`` of every stored key and of probes just below, between and above them."""
    probes = list(model)
    probes += [(order, seq - 1) for order, seq in model]  # absent, just below a stored key
    probes += [(order, seq + 1) for order, seq in model]
    probes += [(-1e300, 0), (1e300, 0)]
    for probe in probes:
        assert index.rank(probe) == bisect.bisect_left(model, probe), probe


# -- unit tests -------------------------------------------------------------------------------


def test_empty_index() -> None:
    """An empty index has no keys, ranks everything at 0 and ignores discards."""
    index: OrderIndex[Key] = OrderIndex()
    assert len(index) == 0
    assert not index
    assert list(index) == []
    assert (1.0, 1) not in index
    assert index.rank((1.0, 1)) == 0
    index.discard((1.0, 1))
    assert len(index) == 0
    index._check()


def test_single_key() -> None:
    """One key: rank is 0 at or below it and 1 above it; discarding it empties the index."""
    index: OrderIndex[Key] = OrderIndex()
    index.add((5.0, 1))
    assert len(index) == 1
    assert (5.0, 1) in index
    assert (5.0, 2) not in index
    assert index.rank((5.0, 1)) == 0
    assert index.rank((4.0, 99)) == 0
    assert index.rank((5.0, 2)) == 1
    assert index.rank((6.0, 0)) == 1
    index.discard((5.0, 1))
    assert len(index) == 0
    assert list(index) == []
    index._check()


def test_discard_of_a_missing_key_is_a_no_op() -> None:
    """Discarding an absent key (below, between, above, or already removed) changes nothing."""
    index: OrderIndex[Key] = OrderIndex([(1.0, 1), (2.0, 2), (3.0, 3)], load=1)
    for missing in [(0.0, 0), (1.5, 0), (2.0, 3), (9.0, 9)]:
        index.discard(missing)
        assert list(index) == [(1.0, 1), (2.0, 2), (3.0, 3)]
        index._check()
    index.discard((2.0, 2))
    index.discard((2.0, 2))
    assert list(index) == [(1.0, 1), (3.0, 3)]
    index._check()


def test_rank_of_absent_keys_below_between_and_above() -> None:
    """``rank`` counts the stored keys strictly smaller than any probe, stored or not."""
    index: OrderIndex[Key] = OrderIndex(load=2)
    for seq, order in enumerate([10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0]):
        index.add((order, seq))
    assert index.rank((0.0, 0)) == 0  # below everything
    assert index.rank((10.0, -1)) == 0  # same order, smaller seq
    assert index.rank((10.0, 0)) == 0  # the smallest key itself
    assert index.rank((10.0, 1)) == 1  # just after it
    assert index.rank((35.0, 0)) == 3  # between two buckets' worth of keys
    assert index.rank((40.0, 3)) == 3
    assert index.rank((40.0, 4)) == 4
    assert index.rank((70.0, 6)) == 6  # the largest key
    assert index.rank((70.0, 7)) == 7  # above everything
    assert index.rank((1e9, 0)) == 7


def test_splits_across_many_buckets() -> None:
    """With a small load, many insertions split buckets; order and ranks stay right."""
    keys = keys_of(500, seed=1)
    index: OrderIndex[Key] = OrderIndex(load=4)
    model: list[Key] = []
    for n, key in enumerate(keys, 1):
        index.add(key)
        bisect.insort(model, key)
        if n % 50 == 0:
            index._check()
            assert index.rank(key) == bisect.bisect_left(model, key)
    assert len(index._lists) > 500 // 8  # really spread over many buckets
    assert list(index) == model
    assert len(index) == 500
    assert all(key in index for key in keys)
    assert_ranks(index, model)
    index._check()


def test_increasing_keys_append_to_the_last_bucket() -> None:
    """Keys arriving in increasing order (the common case) keep splitting the last bucket."""
    index: OrderIndex[Key] = OrderIndex(load=3)
    keys = [(float(seq // 2), seq) for seq in range(100)]
    for key in keys:
        index.add(key)
    index._check()
    assert list(index) == keys
    assert [index.rank(key) for key in keys] == list(range(100))


def test_removal_empties_and_merges_buckets() -> None:
    """Removing keys shrinks, merges and deletes buckets until the index is empty."""
    keys = keys_of(300, seed=2)
    index: OrderIndex[Key] = OrderIndex(load=4)
    for key in keys:
        index.add(key)
    model = sorted(keys)
    buckets_before = len(index._lists)
    rng = random.Random(3)
    order = list(keys)
    rng.shuffle(order)
    for n, key in enumerate(order, 1):
        index.discard(key)
        model.remove(key)
        assert key not in index
        if n % 25 == 0:
            index._check()
            assert list(index) == model
            assert_ranks(index, model)
            # Merging keeps the number of buckets proportional to the number of keys.
            assert len(index._lists) <= max(1, len(model) // 2 + 1)
    assert buckets_before > 30
    assert len(index) == 0
    assert index._lists == []
    assert index._maxes == []
    assert index.rank((0.0, 0)) == 0
    index.add((1.0, 1))
    assert list(index) == [(1.0, 1)]
    index._check()


def test_removing_whole_buckets_from_the_middle_and_the_ends() -> None:
    """Emptying the first, a middle and the last bucket keeps the neighbours consistent."""
    index: OrderIndex[Key] = OrderIndex([(float(i), i) for i in range(40)], load=4)
    model = [(float(i), i) for i in range(40)]
    for block in (range(0, 4), range(16, 24), range(36, 40)):
        for i in block:
            index.discard((float(i), i))
            model.remove((float(i), i))
            index._check()
            assert_ranks(index, model)
    assert list(index) == model


def test_merge_into_a_full_neighbour_splits_again() -> None:
    """A small bucket merged into a neighbour that is nearly full is split again at once."""
    index: OrderIndex[Key] = OrderIndex([(float(i), i) for i in range(8)], load=4)
    assert [len(bucket) for bucket in index._lists] == [4, 4]
    for seq in range(8, 12):  # fill the first bucket up to 2 * load, without a split
        index.add((2.5, seq))
    assert [len(bucket) for bucket in index._lists] == [8, 4]
    index.rank((5.0, 0))  # build the Fenwick tree, so the merge and split must drop it
    for i in (4, 5, 6):  # the second bucket drops below load // 2 and is merged
        index.discard((float(i), i))
    assert [len(bucket) for bucket in index._lists] == [4, 5]
    index._check()
    model = [(float(i), i) for i in range(3)] + [(2.5, s) for s in range(8, 12)]
    model += [(3.0, 3), (7.0, 7)]
    assert list(index) == model
    assert_ranks(index, model)


def test_load_one_still_works() -> None:
    """The smallest load makes every bucket tiny; emptied buckets must still go away."""
    index: OrderIndex[Key] = OrderIndex(load=1)
    keys = keys_of(60, seed=4)
    for key in keys:
        index.add(key)
        index._check()
    model = sorted(keys)
    assert_ranks(index, model)
    for key in keys[::2]:
        index.discard(key)
        model.remove(key)
        index._check()
    assert list(index) == model
    assert_ranks(index, model)


def test_invalid_load_is_rejected() -> None:
    """A load below 1 makes no sense."""
    with pytest.raises(ValueError, match="load"):
        OrderIndex(load=0)


def test_clear() -> None:
    """``clear`` removes everything, and the index is usable afterwards."""
    index: OrderIndex[Key] = OrderIndex(keys_of(100), load=4)
    index.rank((10.0, 0))  # build the Fenwick tree so that clear must drop it
    index.clear()
    assert len(index) == 0
    assert list(index) == []
    assert index.rank((10.0, 0)) == 0
    index.add((2.0, 1))
    index.add((1.0, 2))
    assert list(index) == [(1.0, 2), (2.0, 1)]
    assert index.rank((2.0, 0)) == 1
    index._check()


def test_bulk_load_builds_from_unsorted_keys_and_merges_with_existing_ones() -> None:
    """``bulk_load`` (and the constructor) sort unsorted keys and keep keys already stored."""
    keys = keys_of(1000, seed=5)
    index: OrderIndex[Key] = OrderIndex(keys[:600], load=8)
    index._check()
    assert list(index) == sorted(keys[:600])
    index.rank((1.0, 0))
    index.bulk_load(keys[600:])
    index._check()
    model = sorted(keys)
    assert list(index) == model
    assert len(index) == 1000
    assert_ranks(index, model)
    # Still a normal index afterwards.
    index.discard(model[500])
    index.add((-1.0, -1))
    model.remove(model[500])
    model.insert(0, (-1.0, -1))
    assert list(index) == model
    assert_ranks(index, model)
    index._check()


def test_bulk_load_from_an_iterator() -> None:
    """``bulk_load`` accepts any iterable, including a one-shot generator."""
    index: OrderIndex[Key] = OrderIndex((key for key in keys_of(50)), load=4)
    assert list(index) == sorted(keys_of(50))


def test_duplicates_are_kept_as_a_multiset() -> None:
    """Not needed by the scheduler (its keys are distinct), but adding a key twice is counted."""
    index: OrderIndex[Key] = OrderIndex(load=2)
    for key in [(1.0, 1), (2.0, 2), (2.0, 2), (2.0, 2), (3.0, 3)]:
        index.add(key)
    assert len(index) == 5
    assert index.rank((2.0, 2)) == 1
    assert index.rank((3.0, 3)) == 4
    index.discard((2.0, 2))
    assert len(index) == 4
    assert (2.0, 2) in index
    assert index.rank((3.0, 3)) == 3
    index._check()


def test_default_load_and_repr() -> None:
    """The default load is the documented constant; ``repr`` shows the keys in order."""
    index: OrderIndex[Key] = OrderIndex([(2.0, 1), (1.0, 2)])
    assert index._load == DEFAULT_LOAD
    assert repr(index) == f"OrderIndex([(1.0, 2), (2.0, 1)], load={DEFAULT_LOAD})"


def test_random_operations_against_a_sorted_list() -> None:
    """A long deterministic random run (too long for the state machine) with a small load."""
    rng = random.Random(6)
    index: OrderIndex[Key] = OrderIndex(load=5)
    model: list[Key] = []
    live: list[Key] = []
    seq = 0
    for step in range(20_000):
        roll = rng.random()
        if roll < 0.45 or not live:
            seq += 1
            key = (float(rng.randrange(200)), seq)
            index.add(key)
            bisect.insort(model, key)
            live.append(key)
        elif roll < 0.85:
            key = live.pop(rng.randrange(len(live)))
            index.discard(key)
            model.remove(key)
        else:
            probe = (float(rng.randrange(-1, 201)) + rng.choice([0.0, 0.5]), rng.randrange(seq + 2))
            assert index.rank(probe) == bisect.bisect_left(model, probe)
        if step % 1000 == 0:
            index._check()
            assert list(index) == model
    index._check()
    assert list(index) == model
    assert_ranks(index, model)


# -- model-based test -------------------------------------------------------------------------

orders = st.one_of(
    st.sampled_from([0.0, 1.0, 2.0, 2.5, -1.0]),
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
)


class OrderIndexMachine(RuleBasedStateMachine):
    """Random add / discard / rank / bulk_load / clear against a plain sorted list."""

    keys = Bundle("keys")

    def __init__(self) -> None:
        super().__init__()
        self.index: OrderIndex[Key] = OrderIndex()
        self.model: list[Key] = []
        self.seq = 0

    @initialize(load=st.integers(min_value=1, max_value=6))
    def make_index(self, load: int) -> None:
        self.index = OrderIndex(load=load)

    def _next_key(self, order: float) -> Key:
        self.seq += 1
        return (order, self.seq)

    @rule(target=keys, order=orders)
    def add(self, order: float) -> Key:
        key = self._next_key(order)
        self.index.add(key)
        bisect.insort(self.model, key)
        return key

    @rule(orders_=st.lists(orders, max_size=30))
    def bulk_load(self, orders_: list[float]) -> None:
        new = [self._next_key(order) for order in orders_]
        self.index.bulk_load(new)
        self.model = sorted(self.model + new)

    @rule(key=keys)
    def discard(self, key: Key) -> None:
        # The bundle keeps discarded keys too, so this also covers discarding a missing key.
        self.index.discard(key)
        i = bisect.bisect_left(self.model, key)
        if i < len(self.model) and self.model[i] == key:
            del self.model[i]

    @rule(order=orders, seq_offset=st.integers(min_value=-2, max_value=2))
    def discard_absent(self, order: float, seq_offset: int) -> None:
        key = (order, self.seq + 1 + abs(seq_offset))  # a sequence number never handed out
        self.index.discard(key)

    @rule(key=keys)
    def rank_of_known_key(self, key: Key) -> None:
        assert self.index.rank(key) == bisect.bisect_left(self.model, key)
        assert (key in self.index) == (key in self.model)

    @rule(order=orders, seq=st.integers(min_value=-1, max_value=200))
    def rank_of_any_key(self, order: float, seq: int) -> None:
        probe = (order, seq)
        assert self.index.rank(probe) == bisect.bisect_left(self.model, probe)

    @rule(roll=st.integers(min_value=0, max_value=9))
    def clear(self, roll: int) -> None:
        # Only act on one roll in ten: clearing often would keep the index too small to split.
        if roll == 0:
            self.index.clear()
            self.model.clear()

    @invariant()
    def matches_model(self) -> None:
        assert len(self.index) == len(self.model)
        assert list(self.index) == self.model
        self.index._check()


OrderIndexMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_order_index_matches_model = OrderIndexMachine.TestCase

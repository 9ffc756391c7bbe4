"""A sorted multiset of keys that answers "how many keys are smaller than k" quickly.

:class:`OrderIndex` keeps up to around a million keys (in the scheduler: ``(order, seq)`` tuples,
all distinct) and supports :meth:`~OrderIndex.add`, :meth:`~OrderIndex.discard` and
:meth:`~OrderIndex.rank` in about O(log n) each, in pure Python.

The layout follows the idea behind ``sortedcontainers.SortedList`` (no code is shared and it is
not a dependency):

* the keys live in a list of short sorted lists ("buckets"), so an insertion or removal only
  shifts the items of one bucket (a ``memmove`` of at most ``2 * load`` pointers) instead of the
  whole sequence;
* a parallel list holds each bucket's largest key, so ``bisect`` finds the right bucket in
  O(log(n / load));
* a Fenwick (binary indexed) tree over the bucket lengths gives the number of keys in all buckets
  before a given one in O(log(n / load)). Ordinary insertions and removals only change one
  bucket's length, which is a point update of the tree. Splitting or merging buckets shifts the
  bucket positions, so the tree is then dropped and rebuilt, in O(n / load), on the next
  :meth:`~OrderIndex.rank` -- a burst of splits therefore pays for a single rebuild.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator
from itertools import chain, pairwise
from typing import Any, Generic, Protocol, TypeVar, cast

__all__ = ["DEFAULT_LOAD", "OrderIndex"]

#: Target bucket size. Around a thousand keeps the list of buckets short (about a thousand
#: buckets for a million keys, so a tree rebuild stays cheap) while a bucket insertion is still
#: a small ``memmove``.
DEFAULT_LOAD = 1000


class _Comparable(Protocol):
    """Anything that can be ordered with ``<`` (all that ``bisect`` and ``sorted`` need)."""

    def __lt__(self, other: Any, /) -> bool: ...


K = TypeVar("K", bound=_Comparable)


class OrderIndex(Generic[K]):
    """A sorted multiset of keys with O(log n) insertion, removal and rank queries.

    Keys must be totally ordered with respect to each other (for example no NaN inside a key).
    The same key may be added more than once; each :meth:`discard` then removes one copy.

    ``load`` is the target bucket size: a bucket is split in two once it holds more than
    ``2 * load`` keys and merged into a neighbour once it drops below ``load // 2``. The default
    suits large indexes; tests pass a tiny value so that splits and merges happen constantly.

    Declare the key type where the index is stored, e.g.
    ``self._index: OrderIndex[tuple[float, int]] = OrderIndex()``.
    """

    __slots__ = ("_half", "_len", "_lists", "_load", "_maxes", "_tree", "_twice")

    def __init__(self, keys: Iterable[K] = (), *, load: int = DEFAULT_LOAD) -> None:
        """Create an index holding ``keys`` (in any order), with target bucket size ``load``."""
        if load < 1:
            raise ValueError(f"load must be at least 1, got {load}")
        self._load = load
        self._twice = 2 * load
        # At least 1, so that an emptied bucket is always merged away even when load == 1.
        self._half = max(load // 2, 1)
        self._lists: list[list[K]] = []
        self._maxes: list[K] = []
        self._len = 0
        # Fenwick tree over the bucket lengths, 1-based (index 0 unused), or None while stale.
        self._tree: list[int] | None = None
        self.bulk_load(keys)

    # -- queries ------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Return the number of keys stored."""
        return self._len

    def __iter__(self) -> Iterator[K]:
        """Iterate over the keys in ascending order."""
        return chain.from_iterable(self._lists)

    def __contains__(self, key: object) -> bool:
        """Return whether ``key`` is stored (``key`` must be comparable with the stored keys)."""
        # ``in`` accepts any object by protocol; comparing a foreign type raises TypeError, as
        # it would for a sorted list, so treating it as a key here is only a typing matter.
        probe = cast("K", key)
        maxes = self._maxes
        i = bisect_left(maxes, probe)
        if i == len(maxes):
            return False
        bucket = self._lists[i]
        # bucket[-1] == maxes[i] >= key, so j is always a valid position.
        j = bisect_left(bucket, probe)
        return bool(bucket[j] == probe)

    def rank(self, key: K) -> int:
        """Return the number of stored keys strictly less than ``key``.

        ``key`` does not have to be stored. Runs in O(log n).
        """
        maxes = self._maxes
        # Every bucket before i holds only keys < key; bucket i holds the first key >= key.
        i = bisect_left(maxes, key)
        if i == len(maxes):
            return self._len
        rank = bisect_left(self._lists[i], key)
        if i:
            tree = self._tree
            if tree is None:
                tree = self._build_tree()
            # Fenwick prefix sum: the lengths of buckets 0 .. i-1.
            while i:
                rank += tree[i]
                i &= i - 1
        return rank

    # -- updates ------------------------------------------------------------------------------

    def add(self, key: K) -> None:
        """Insert ``key`` (a second copy if it is already stored). Amortised O(log n)."""
        maxes = self._maxes
        if not maxes:
            self._lists.append([key])
            maxes.append(key)
            self._len = 1
            self._tree = None
            return
        i = bisect_left(maxes, key)
        if i == len(maxes):
            # Larger than everything: it becomes the new maximum of the last bucket. This is the
            # common case for increasing sequence numbers, and needs no bisect inside the bucket.
            i -= 1
            bucket = self._lists[i]
            bucket.append(key)
            maxes[i] = key
        else:
            bucket = self._lists[i]
            insort(bucket, key)
        self._len += 1
        if len(bucket) > self._twice:
            self._split(i)
        elif (tree := self._tree) is not None:
            self._tree_add(tree, i, 1)

    def discard(self, key: K) -> None:
        """Remove one copy of ``key`` if it is stored; do nothing otherwise. Amortised O(log n)."""
        maxes = self._maxes
        i = bisect_left(maxes, key)
        if i == len(maxes):
            return
        bucket = self._lists[i]
        j = bisect_left(bucket, key)
        if bucket[j] != key:
            return
        del bucket[j]
        self._len -= 1
        size = len(bucket)
        if size >= self._half or (size > 0 and len(maxes) == 1):
            # The bucket stays as it is (a lone bucket may be small: there is nothing to merge
            # it with); only its maximum may have changed.
            if j == size:
                maxes[i] = bucket[-1]
            if (tree := self._tree) is not None:
                self._tree_add(tree, i, -1)
        elif len(maxes) > 1:
            self._merge(i)
        else:
            # The only bucket is now empty.
            self.clear()

    def clear(self) -> None:
        """Remove every key."""
        self._lists = []
        self._maxes = []
        self._len = 0
        self._tree = None

    def bulk_load(self, keys: Iterable[K]) -> None:
        """Add every key of ``keys`` (in any order) at once, in O((n + m) log(n + m)).

        Much faster than repeated :meth:`add` for building a large index, e.g. when a queue is
        restored from storage. Existing keys are kept.
        """
        values = sorted(chain(self, keys)) if self._len else sorted(keys)
        load = self._load
        # Fill buckets only to ``load`` (not ``2 * load``) so that later insertions have room
        # before they force a split.
        self._lists = [values[p : p + load] for p in range(0, len(values), load)]
        self._maxes = [bucket[-1] for bucket in self._lists]
        self._len = len(values)
        self._tree = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self)!r}, load={self._load})"

    # -- internals ----------------------------------------------------------------------------

    def _split(self, i: int) -> None:
        """Split the oversized bucket ``i`` into two."""
        bucket = self._lists[i]
        load = self._load
        self._lists.insert(i + 1, bucket[load:])
        del bucket[load:]
        # maxes[i] is still right for the upper half, which is now bucket i + 1.
        self._maxes.insert(i, bucket[-1])
        # Bucket positions after i moved: rebuild lazily rather than on every split.
        self._tree = None

    def _merge(self, i: int) -> None:
        """Merge the undersized (possibly empty) bucket ``i`` into a neighbour."""
        lists = self._lists
        maxes = self._maxes
        # Merge into the previous bucket; the first bucket takes in the second instead.
        low = i - 1 if i else 0
        merged = lists[low]
        merged.extend(lists[low + 1])
        maxes[low] = merged[-1]
        del lists[low + 1]
        del maxes[low + 1]
        self._tree = None
        if len(merged) > self._twice:
            self._split(low)

    def _build_tree(self) -> list[int]:
        """Rebuild the Fenwick tree over the bucket lengths in O(number of buckets)."""
        tree = [0]
        tree.extend(map(len, self._lists))
        size = len(tree)
        for k in range(1, size):
            parent = k + (k & -k)
            if parent < size:
                tree[parent] += tree[k]
        self._tree = tree
        return tree

    @staticmethod
    def _tree_add(tree: list[int], i: int, delta: int) -> None:
        """Add ``delta`` to the length of bucket ``i`` in the Fenwick tree."""
        k = i + 1
        size = len(tree)
        while k < size:
            tree[k] += delta
            k += k & -k

    def _check(self) -> None:
        """Assert the internal invariants (for tests)."""
        lists, maxes = self._lists, self._maxes
        assert len(lists) == len(maxes)
        assert self._len == sum(map(len, lists))
        for bucket, top in zip(lists, maxes, strict=True):
            assert bucket, "empty bucket"
            assert len(bucket) <= self._twice, "oversized bucket"
            assert bucket[-1] == top, "stale maximum"
        flat = list(self)
        assert all(not (b < a) for a, b in pairwise(flat)), "not sorted"
        if self._tree is not None:
            tree = self._tree
            assert tree == self._build_tree(), "stale Fenwick tree"

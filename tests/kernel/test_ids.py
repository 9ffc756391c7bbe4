"""Tests of the task and message ids (``miminions.kernel.ids``)."""

from __future__ import annotations

import os
import random
import re
import sys
import threading

import pytest

from miminions.kernel.ids import time_ordered_id, time_ordered_ids
from miminions.kernel.messaging import new_message_id
from miminions.kernel.task_input import new_task_id


def test_ids_are_hex_time_then_random_and_carry_their_prefix() -> None:
    assert re.fullmatch(r"[0-9a-f]{24}", new_task_id())
    assert re.fullmatch(r"m[0-9a-f]{24}", new_message_id())
    assert time_ordered_id("x-").startswith("x-")


def test_ids_made_in_one_burst_are_unique() -> None:
    ids = [new_task_id() for _ in range(20_000)]  # many within the same microsecond
    assert len(set(ids)) == len(ids)


def test_ids_made_by_many_threads_at_once_are_unique() -> None:
    made: list[list[str]] = [[] for _ in range(4)]
    start = threading.Barrier(len(made))

    def make(into: list[str]) -> None:
        start.wait()
        into.extend(new_task_id() for _ in range(5_000))

    threads = [threading.Thread(target=make, args=(into,)) for into in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [i for ids in made for i in ids]
    assert len(set(every)) == len(every) == 20_000


def test_ids_follow_time_order_across_microseconds() -> None:
    first = new_task_id()
    later = next(i for i in iter(new_task_id, None) if i[:14] != first[:14])
    assert later > first


def test_an_application_seeding_random_cannot_repeat_ids() -> None:
    state = random.getstate()
    try:
        made = []
        for _ in range(200):
            random.seed(42)  # e.g. an agent made reproducible, before each task it submits
            made.append(new_task_id()[14:])
        assert len(set(made)) == len(made)
    finally:
        random.setstate(state)


@pytest.mark.skipif(sys.platform == "win32" or not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_makes_different_ids_from_its_parent() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one id to the parent, then out without cleanup
        try:
            os.write(write, new_task_id()[14:].encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        child = os.read(read, 64).decode()
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    parent = new_task_id()[14:]
    assert len(child) == 10
    assert child != parent


def test_ids_made_together_are_unique_well_formed_and_in_time_order() -> None:
    assert time_ordered_ids(0) == []
    assert re.fullmatch(r"x-[0-9a-f]{24}", time_ordered_ids(1, "x-")[0])
    batch = time_ordered_ids(30_000)  # more random bytes than one refill of the pool
    assert len(set(batch)) == len(batch)
    assert all(re.fullmatch(r"[0-9a-f]{24}", i) for i in batch)
    times = [int(i[:14], 16) for i in batch]
    assert times == list(range(times[0], times[0] + len(batch)))  # never a shared time part
    assert len({i[14:] for i in batch}) > 0.99 * len(batch)  # random parts, not one reused
    later = [new_task_id() for _ in range(1_000)]
    assert not set(later) & set(batch)

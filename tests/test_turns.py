"""Cycles and warm-up chunks take turns (service/turns.py): never both at once, the cycle first."""

from __future__ import annotations

import threading
import time

from exporter.service.turns import Turns


def test_a_cycle_waits_for_the_chunk_under_way_and_goes_before_the_next() -> None:
    turns, order = Turns(), []
    chunk_started, release_chunk = threading.Event(), threading.Event()

    def warm_up() -> None:
        with turns.after():
            chunk_started.set()
            release_chunk.wait(10)
            order.append("chunk 1")
        cycle_waiting.wait(10)  # the next chunk is asked for while the cycle waits
        with turns.after():
            order.append("chunk 2")

    def cycle() -> None:
        cycle_waiting.set()
        with turns.first():
            order.append("cycle")

    cycle_waiting = threading.Event()
    background = threading.Thread(target=warm_up)
    background.start()
    chunk_started.wait(10)
    scoring = threading.Thread(target=cycle)
    scoring.start()
    cycle_waiting.wait(10)
    deadline = time.monotonic() + 10
    while turns._waiting == 0 and time.monotonic() < deadline:  # the cycle has asked for its turn
        time.sleep(0.01)
    assert scoring.is_alive() and order == [], "the cycle ran beside a chunk"
    release_chunk.set()
    scoring.join(10)
    background.join(10)
    assert order == ["chunk 1", "cycle", "chunk 2"]


def test_turns_are_given_back_when_the_work_raises() -> None:
    turns = Turns()
    try:
        with turns.after():
            raise RuntimeError("a failed chunk")
    except RuntimeError:
        pass
    done = threading.Event()
    threading.Thread(target=lambda: (turns.first().__enter__(), done.set())).start()
    assert done.wait(10), "a failed chunk kept its turn"

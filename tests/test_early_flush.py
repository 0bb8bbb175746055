"""EarlyFlush: written data leaves at the next write once it has waited behind
other work, not only at the end of the loop iteration (pure, time passed in)."""

from __future__ import annotations

from brpc._session.quic.flush import EARLY_FLUSH_AFTER, EarlyFlush


def test_writes_close_together_wait_for_the_end_of_the_iteration() -> None:
    flush = EarlyFlush()
    assert not flush.wrote(10.0)
    assert not flush.wrote(10.0 + EARLY_FLUSH_AFTER / 2)
    assert not flush.wrote(10.0 + EARLY_FLUSH_AFTER * 0.99)


def test_a_write_after_the_oldest_has_waited_long_enough_sends_at_once() -> None:
    flush = EarlyFlush()
    assert not flush.wrote(10.0)
    assert flush.wrote(10.0 + EARLY_FLUSH_AFTER)
    assert flush.wrote(10.0 + 2 * EARLY_FLUSH_AFTER)  # until something transmits


def test_a_transmit_starts_the_wait_again_at_the_next_write() -> None:
    flush = EarlyFlush(after=0.002)
    assert not flush.wrote(1.0)
    flush.transmitted()
    assert not flush.wrote(1.5)  # long after the last write, but the first since
    assert not flush.wrote(1.501)
    assert flush.wrote(1.502)

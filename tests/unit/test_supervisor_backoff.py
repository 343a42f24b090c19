"""The restart policy of the supervisor (stack.supervisor.Backoff), on a clock the test sets."""

from __future__ import annotations

from stack.supervisor import Backoff


def test_a_process_that_keeps_crashing_waits_longer_each_time_up_to_the_cap() -> None:
    backoff = Backoff()
    delays = [backoff.crashed(ran=20.0) for _ in range(10)]
    assert delays[:4] == [backoff.first_delay * 2**i for i in range(4)]
    assert all(d is not None and d <= backoff.max_delay for d in delays)
    assert delays[-1] == backoff.max_delay


def test_a_process_that_ran_for_a_while_starts_its_back_off_again() -> None:
    backoff = Backoff()
    for _ in range(4):
        backoff.crashed(ran=20.0)
    assert backoff.crashed(ran=backoff.stable_seconds + 1) == backoff.first_delay


def test_a_process_that_fails_right_after_every_start_is_given_up_on() -> None:
    backoff = Backoff()
    assert backoff.fatal_quick_failures is not None
    results = [backoff.crashed(ran=0.5) for _ in range(backoff.fatal_quick_failures)]
    assert all(r is not None for r in results[:-1])
    assert results[-1] is None


def test_one_slow_crash_between_quick_ones_keeps_the_process_alive() -> None:
    backoff = Backoff()
    assert backoff.fatal_quick_failures is not None
    for _ in range(backoff.fatal_quick_failures - 1):
        assert backoff.crashed(ran=0.5) is not None
    assert backoff.crashed(ran=30.0) is not None  # it got going this time
    for _ in range(backoff.fatal_quick_failures - 1):
        assert backoff.crashed(ran=0.5) is not None


def test_without_a_limit_a_quickly_failing_process_is_restarted_for_ever() -> None:
    backoff = Backoff(fatal_quick_failures=None)
    assert all(backoff.crashed(ran=0.1) is not None for _ in range(50))

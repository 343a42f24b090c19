"""The restart policy of `make run`'s supervisor, on a clock the test sets."""

from __future__ import annotations

from chatproject.stack import (
    FAST_FAILURES_FATAL,
    RESTART_FIRST_DELAY,
    RESTART_MAX_DELAY,
    STABLE_SECONDS,
    Child,
)


def crash_after(child: Child, ran: float) -> float | None:
    now = child.started_at + ran
    delay = child.crashed(now)
    child.started_at = now + (delay or 0)  # it starts again when its back-off is over
    return delay


def test_a_child_that_keeps_crashing_waits_longer_each_time_up_to_the_cap() -> None:
    child = Child("worker", [], None)
    delays = [crash_after(child, ran=20.0) for _ in range(10)]
    assert delays[:4] == [RESTART_FIRST_DELAY * 2**i for i in range(4)]
    assert all(d is not None and d <= RESTART_MAX_DELAY for d in delays)
    assert delays[-1] == RESTART_MAX_DELAY


def test_a_child_that_ran_for_a_while_starts_its_back_off_again() -> None:
    child = Child("worker", [], None)
    for _ in range(4):
        crash_after(child, ran=20.0)
    assert crash_after(child, ran=STABLE_SECONDS + 1) == RESTART_FIRST_DELAY


def test_a_child_that_fails_right_after_every_start_is_given_up_on() -> None:
    child = Child("web", [], None)
    results = [crash_after(child, ran=0.5) for _ in range(FAST_FAILURES_FATAL)]
    assert all(r is not None for r in results[:-1])
    assert results[-1] is None


def test_one_slow_crash_between_quick_ones_keeps_the_child_alive() -> None:
    child = Child("web", [], None)
    for _ in range(FAST_FAILURES_FATAL - 1):
        assert crash_after(child, ran=0.5) is not None
    assert crash_after(child, ran=30.0) is not None  # it got going this time
    for _ in range(FAST_FAILURES_FATAL - 1):
        assert crash_after(child, ran=0.5) is not None

"""Token buckets with a clock the test turns."""

from __future__ import annotations

from docxy.edge.limits import MAX_CLIENTS, Buckets, retry_after


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_the_rate() -> None:
    clock = Clock()
    buckets = Buckets(rate=1.0, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == 1.0  # empty: one second until a token
    assert buckets.take("b") == 0.0  # another client has its own bucket
    clock.now += 1.0
    assert buckets.take("a") == 0.0
    clock.now += 100.0
    assert [buckets.take("a") for _ in range(4)][-1] > 0  # refills to the burst, no further


def test_bandwidth_runs_into_debt_and_pays_it_off() -> None:
    clock = Clock()
    buckets = Buckets(rate=100.0, burst=100, clock=clock)
    assert buckets.charge("a", 400) == 3.0  # 100 in the bucket, 300 owed at 100/s
    assert buckets.debt("a") == 3.0
    clock.now += 3.0
    assert buckets.debt("a") == 0.0


def test_off_is_free_and_keeps_no_state() -> None:
    buckets = Buckets(rate=0, burst=0)
    assert not buckets
    assert buckets.take("a") == 0.0 and buckets.charge("a", 10**9) == 0.0
    assert len(buckets) == 0


def test_the_table_of_clients_is_bounded() -> None:
    buckets = Buckets(rate=1.0, burst=1)
    for n in range(MAX_CLIENTS + 10):
        buckets.take(f"client-{n}")
    assert len(buckets) == MAX_CLIENTS


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    assert retry_after(0.01) == "1"
    assert retry_after(2.2) == "3"


def test_failed_logins_refill_are_given_back_and_are_kept_per_client() -> None:
    from docxy.access.logins import FailedLogins

    now = [0.0]
    logins = FailedLogins(6, clock=lambda: now[0])  # one wrong password back every 10 s
    assert logins.take("192.0.2.1") is None
    logins.give_back("192.0.2.1")  # a right password costs nothing
    for _ in range(6):
        assert logins.take("192.0.2.1") is None
    refusal = logins.take("192.0.2.1")
    assert refusal is not None and refusal.status == 429
    assert ("Retry-After", "10") in refusal.headers()
    assert logins.take("192.0.2.2") is None
    now[0] = 10.0
    assert logins.take("192.0.2.1") is None
    assert FailedLogins(0).take("192.0.2.1") is None  # off

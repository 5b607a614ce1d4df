"""Traffic tables, the sequential gates and the rollout state machine: pure, under a fake clock."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serving.observe.stats import ShadowStats, StatsWindow
from serving.traffic.rollout import Evidence, Gates, Plan, Rollout, log_evidence
from serving.traffic.routing import TrafficPolicy, bucket, choose, shares
from serving.traffic.shadow import compare, output_kinds

THRESHOLD = float(np.log(1000))


def canary_table(weight: float, salt: str = "s1") -> TrafficPolicy:
    return TrafficPolicy(weights=((2, weight), (1, 1.0 - weight)), salt=salt)


def test_split_proportions_keyed_and_unkeyed() -> None:
    rng = np.random.default_rng(0)
    table = canary_table(0.25)
    keyed = [choose(table, f"user-{i}", 0.0) for i in range(10_000)]
    unkeyed = [choose(table, None, rng.random()) for _ in range(10_000)]
    for picks in (keyed, unkeyed):
        assert abs(picks.count(2) / len(picks) - 0.25) <= 0.015


def test_sticky_keys_only_move_stable_to_canary_as_the_weight_rises() -> None:
    keys = [f"k{i}" for i in range(5_000)]
    before = {k: choose(canary_table(0.05), k, 0.0) for k in keys}
    assert before == {k: choose(canary_table(0.05), k, 0.0) for k in keys}  # sticky
    for weight in (0.25, 0.5, 1.0):
        after = {k: choose(canary_table(weight), k, 0.0) for k in keys}
        assert all(after[k] == 2 for k in keys if before[k] == 2)
        before = after
    assert set(before.values()) == {2}


def test_a_new_salt_reshuffles_keys() -> None:
    keys = [f"k{i}" for i in range(2_000)]
    a = {k for k in keys if choose(canary_table(0.5, "a"), k, 0.0) == 2}
    b = {k for k in keys if choose(canary_table(0.5, "b"), k, 0.0) == 2}
    assert 0.4 < len(a & b) / len(a) < 0.6
    assert 0 <= bucket("a", "x") < 1


def test_shares_normalize_newest_first() -> None:
    assert shares({1: 90, 2: 10}) == ((2, 0.1), (1, 0.9))
    with pytest.raises(ValueError):
        shares({1: -1})


def test_sequential_test_catches_a_failing_canary_within_five_requests() -> None:
    for p0 in (0.001, 0.015, 0.15):
        caught = next(n for n in range(1, 50) if log_evidence(n, 0, p0) >= THRESHOLD)
        assert caught <= 5


def test_sequential_test_never_rolls_back_an_equal_canary() -> None:
    """Canary and stable fail at the same rate; the rollout sees both streams as the controller
    would (merged totals, decided every 50 requests, stable's rate estimated from its own
    stream), over 10,000 canary requests, for 20 seeds and three rates."""
    rollbacks = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        for rate in (0.0005, 0.01, 0.05):
            rollout = Rollout(
                plan(min_requests_per_step=10**9), salt="s", now=0.0, baseline=Evidence()
            )
            canary, stable = StatsWindow(), StatsWindow()
            for _ in range(200):
                failed = int((rng.random(50) < rate).sum())
                canary.add(window(50 - failed, failed))
                failed = int((rng.random(50) < rate).sum())
                stable.add(window(50 - failed, failed))
                decision = rollout.decide(1.0, Evidence(canary.copy(), stable.copy()))
                if decision.action == "rollback":
                    rollbacks += 1
                    break
    assert rollbacks == 0


def test_sequential_test_needs_many_requests_for_a_small_regression() -> None:
    rng = np.random.default_rng(3)
    fails = np.cumsum(rng.random(5_000) < 0.01)
    caught = next(
        n
        for n in range(1, 5_000)
        if log_evidence(int(fails[n - 1]), n - int(fails[n - 1]), 0.001) >= THRESHOLD
    )
    assert caught > 100


def window(ok: int, failed: int = 0, ms: float = 1.0) -> StatsWindow:
    result = StatsWindow()
    for _ in range(ok):
        result.record("http", 200, int(ms * 1e6), rows=1)
    for _ in range(failed):
        result.record("http", 500, int(ms * 1e6), error=RuntimeError("x"))
    return result.fold()


def plan(**changes: object) -> Plan:
    fields = {
        "model": "m",
        "stable": 1,
        "canary": 2,
        "min_requests_per_step": 10,
        "min_step_s": 1.0,
    }
    fields.update(changes)
    return Plan(**fields)  # type: ignore[arg-type]


def test_rollout_advances_through_every_step_and_promotes() -> None:
    rollout = Rollout(plan(), salt="s", now=0.0, baseline=Evidence())
    assert rollout.traffic().weights == ((2, 0.05), (1, 0.95))
    now, totals = 0.0, Evidence()
    seen = []
    while rollout.active:
        now += 1.5
        totals = Evidence(
            totals.canary.copy().add(window(20)), totals.stable.copy().add(window(20))
        )
        decision = rollout.decide(now, totals)
        rollout.apply(decision, now, totals)
        seen.append(decision.action)
    assert seen == ["advance", "advance", "advance", "promote"]
    assert rollout.status == "promoted"
    assert rollout.traffic().weights == ((2, 1.0),)


def test_rollout_holds_without_enough_evidence_and_time() -> None:
    rollout = Rollout(plan(min_step_s=10.0), salt="s", now=0.0, baseline=Evidence())
    few = rollout.decide(20.0, Evidence(window(3), window(50)))
    assert few.action == "hold" and "3 of 10 requests" in few.reason
    early = rollout.decide(2.0, Evidence(window(30), window(50)))
    assert early.action == "hold" and "of 10 s" in early.reason


def test_rollout_rolls_back_a_failing_canary_and_records_why() -> None:
    rollout = Rollout(plan(), salt="s", now=0.0, baseline=Evidence())
    decision = rollout.decide(0.1, Evidence(window(0, failed=5), window(100)))
    assert decision.action == "rollback" and "failed 5 of 5" in decision.reason
    rollout.apply(decision, 0.1, Evidence())
    assert rollout.status == "rolled_back"
    assert rollout.traffic().weights == ((2, 0.0), (1, 1.0))
    assert rollout.outcome is not None and rollout.outcome["evidence"]["canary"]["errors"] == 5


def test_a_fully_failing_canary_is_rolled_back_within_five_of_its_requests() -> None:
    """Stable's rate is its 99 % upper bound, so the fewer stable answered, the more the canary
    needs: at a 5 % step stable answers about 95 requests by the canary's fifth (here 95 to
    100,000, none failed)."""
    for answered in (95, 1_000, 100_000):
        rollout = Rollout(plan(), salt="s", now=0.0, baseline=Evidence())
        caught = next(
            n
            for n in range(1, 20)
            if rollout.decide(1.0, Evidence(window(0, failed=n), window(answered))).action
            == "rollback"
        )
        assert caught <= 5, (answered, caught)


def test_rollout_rolls_back_a_slow_canary() -> None:
    rollout = Rollout(
        plan(gates=Gates(latency_floor_ms=20)), salt="s", now=0.0, baseline=Evidence()
    )
    decision = rollout.decide(1.0, Evidence(window(25, ms=55), window(200, ms=1)))
    assert decision.action == "rollback" and decision.reason.startswith("latency")


def test_shadow_step_gates_on_agreement() -> None:
    rollout = Rollout(plan(steps=("shadow", 50, 100)), salt="s", now=0.0, baseline=Evidence())
    table = rollout.traffic()
    assert table.weights == ((1, 1.0),) and table.shadow == 2
    poor = ShadowStats(pairs=20, rows=20, agreed_rows=10)
    decision = rollout.decide(5.0, Evidence(StatsWindow(), window(20), poor))
    assert decision.action == "rollback" and "agreement" in decision.reason


def test_manual_transitions() -> None:
    rollout = Rollout(plan(), salt="s", now=0.0, baseline=Evidence())
    rollout.pause()
    assert rollout.decide(100.0, Evidence(window(50), window(50))).action == "hold"
    rollout.resume(100.0)
    rollout.promote(101.0, Evidence())
    assert rollout.status == "promoted"
    with pytest.raises(ValueError):
        rollout.abort()
    other = Rollout(plan(), salt="t", now=0.0, baseline=Evidence())
    other.abort()
    assert other.status == "aborted" and other.traffic().weights[0] == (2, 0.0)


def test_rollout_round_trips_through_json() -> None:
    rollout = Rollout(plan(), salt="abc", now=0.0, baseline=Evidence(window(5), window(5)))
    rollout.apply(rollout.decide(2.0, Evidence(window(30), window(30))), 2.0, Evidence())
    again = Rollout.from_json(json.loads(json.dumps(rollout.to_json())), now=50.0)
    assert (again.step, again.salt, again.traffic()) == (rollout.step, "abc", rollout.traffic())
    assert again.rebase_pending
    # Until rebased, nothing counts: fewer replicas have reported than the baseline holds.
    pending = again.shown(50.0, Evidence())
    assert not pending["counting"] and pending["versions"]["canary"]["requests"] == 0
    assert again.decide(51.0, Evidence()).action == "hold"
    again.rebase(52.0, Evidence(window(40), window(40)))
    shown = again.shown(53.0, Evidence(window(45), window(44)))
    assert shown["counting"] and shown["versions"]["canary"]["requests"] == 5
    assert shown["step"] == rollout.step + 1 and shown["salt"] == "abc"
    # and it goes on deciding: a failing canary after the restart is rolled back
    failing = again.decide(54.0, Evidence(window(45, failed=5), window(400)))
    assert failing.action == "rollback" and "failed 5 of 10" in failing.reason


def test_a_step_without_stable_traffic_holds_the_canary_to_stable_s_history() -> None:
    """At 100 % (or after a restart's rebase) stable answers nothing new: the canary is held to
    stable's totals, not to the floors. Both versions answer in 150 ms and fail 1 %."""
    history = Evidence(StatsWindow(), window(990, failed=10, ms=150))
    rollout = Rollout(plan(steps=(100,)), salt="s", now=0.0, baseline=history)
    later = Evidence(window(495, failed=5, ms=150), history.stable.copy())
    decision = rollout.decide(5.0, later)
    assert decision.action == "promote", decision
    assert decision.evidence["stable"]["p99_counted"] == "since the replicas started"
    slow = Evidence(window(50, ms=400), history.stable.copy())
    assert rollout.decide(5.0, slow).reason.startswith("latency")


def test_compare_classifier_and_values() -> None:
    scores = np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32)
    other = np.array([[0.2, 0.8], [0.3, 0.7]], dtype=np.float32)
    labels = np.array([1, 0])
    pair = compare(
        [scores, labels],
        [other, np.array([1, 1])],
        output_kinds(["FP32", "INT64"]),
        rows=2,
        batched=True,
        atol=1e-4,
        rtol=1e-3,
    )
    assert (pair.rows, pair.agreed_rows, pair.within) == (2, 1, False)
    assert pair.max_abs == pytest.approx(0.5)

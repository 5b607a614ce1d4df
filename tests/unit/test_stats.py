"""Statistics windows: recording, adding up, the difference of two snapshots, the v2 form."""

from __future__ import annotations

from serving.observe.stats import LATENCY_BUCKETS_S, StatsBook, StatsWindow, merge


def window(successes: list[int], failures: int = 0, batch: int = 1) -> StatsWindow:
    result = StatsWindow()
    for total_ns in successes:
        result.record_success(
            batch, total_ns, input_ns=total_ns // 10, queue_ns=total_ns // 5, infer_ns=total_ns // 2
        )
        result.record_execution(batch, total_ns // 2)
    for _ in range(failures):
        result.record_failure(1_000)
    return result


def test_a_success_lands_in_its_latency_bucket_and_its_stages() -> None:
    recorded = window([300_000])  # 0.3 ms
    bucket = LATENCY_BUCKETS_S.index(0.0005)
    assert recorded.latency[bucket] == 1 and sum(recorded.latency) == 1
    stages = recorded.stages
    assert stages["success"].as_dict() == {"count": 1, "ns": 300_000}
    assert (
        stages["compute_input"].ns
        + stages["queue"].ns
        + stages["compute_infer"].ns
        + stages["compute_output"].ns
        == 300_000
    )
    slow = window([20_000_000_000])  # 20 s: past every bound
    assert slow.latency[-1] == 1


def test_windows_add_up_and_the_merge_does_not_touch_its_parts() -> None:
    a, b = window([1_000, 2_000], failures=1, batch=2), window([5_000], batch=4)
    a_before = a.copy()
    total = merge([a, b])
    assert a == a_before
    assert (total.inference_count, total.execution_count, total.requests) == (8, 3, 4)
    assert total.stages["success"].as_dict() == {"count": 3, "ns": 8_000}
    assert {size: d.count for size, d in total.batches.items()} == {2: 2, 4: 1}
    assert sum(total.latency) == 3
    assert total.last_inference_ms == max(a.last_inference_ms, b.last_inference_ms)


def test_the_difference_of_two_snapshots_is_the_window_between_them() -> None:
    book = StatsBook()
    live = book.window("m", 1)
    live.add(window([1_000] * 3, batch=2))
    earlier = book.snapshot()[("m", 1)]
    live.add(window([7_000] * 2, failures=1, batch=8))
    between = book.snapshot()[("m", 1)].minus(earlier)
    assert (between.requests, between.inference_count, between.execution_count) == (3, 16, 2)
    assert list(between.batches) == [8]
    assert sum(between.latency) == 2
    assert earlier.requests == 3  # snapshots are copies


def test_the_v2_statistics_document() -> None:
    document = window([1_000], batch=3).as_v2("m", "2")
    assert document["name"] == "m" and document["version"] == "2"
    assert document["inference_count"] == 3 and document["execution_count"] == 1
    assert set(document["inference_stats"]) == {
        "success", "fail", "queue", "compute_input", "compute_infer", "compute_output"
    }  # fmt: skip
    assert document["batch_stats"] == [{"batch_size": 3, "compute_infer": {"count": 1, "ns": 500}}]

"""When a model version's executions run: directly, or packed into batches by a dynamic batcher."""

from __future__ import annotations

from serving.clock import Clock
from serving.config import ModelConfig
from serving.models.scheduling.base import Execute, OnExecution, Outcome, Scheduler
from serving.models.scheduling.batcher import BatchedScheduler, BatcherOptions
from serving.models.scheduling.direct import DirectScheduler

__all__ = ["Outcome", "Scheduler", "make_scheduler"]


def make_scheduler(
    name: str,
    config: ModelConfig,
    *,
    max_batch_size: int,
    output_names: list[str],
    instances: int,
    execute: Execute,
    clock: Clock,
    on_execution: OnExecution,
) -> Scheduler:
    """The scheduler ``config`` asks for: batched when it has ``dynamic_batching``."""
    batching = config.dynamic_batching
    if batching is None:
        return DirectScheduler(execute, instances=instances, clock=clock, on_execution=on_execution)
    options = BatcherOptions(
        max_batch_size=max_batch_size,
        max_queue_delay_s=batching.max_queue_delay_ms / 1000,
        preferred_batch_sizes=batching.preferred_batch_sizes,
        max_queue_size=batching.max_queue_size,
        default_timeout_s=None
        if batching.default_timeout_ms is None
        else batching.default_timeout_ms / 1000,
        max_concurrent_batches=instances,
    )
    return BatchedScheduler(
        execute,
        options,
        output_names=output_names,
        name=name,
        clock=clock,
        on_execution=on_execution,
    )

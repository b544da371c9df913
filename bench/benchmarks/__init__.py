"""The benchmarks, one module each. Each ``bench_*`` returns one run's figures."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from bench.benchmarks.capacity import bench_capacity
from bench.benchmarks.choices import bench_choices
from bench.benchmarks.common import Context
from bench.benchmarks.e2e import bench_e2e
from bench.benchmarks.fanout import bench_fanout
from bench.benchmarks.latency import bench_latency
from bench.benchmarks.micro import bench_micro
from bench.benchmarks.polling import bench_polling
from bench.benchmarks.profile import bench_profile
from bench.benchmarks.soak import bench_soak
from bench.benchmarks.socketio import bench_socketio
from bench.benchmarks.workload import bench_workload

__all__ = ["BENCHMARKS", "Context"]

BENCHMARKS: dict[str, Callable[[Context], Coroutine[Any, Any, dict[str, Any]]]] = {
    "latency": bench_latency,
    "e2e": bench_e2e,
    "capacity": bench_capacity,
    "fanout": bench_fanout,
    "polling": bench_polling,
    "choices": bench_choices,
    "soak": bench_soak,
    "socketio": bench_socketio,
    "workload": bench_workload,
    "micro": bench_micro,
    "profile": bench_profile,
}

"""Server CPU over a window: per-thread nanoseconds, or clock ticks when a thread vanished."""

from __future__ import annotations

import math
import os

from bench.procs import CpuSample, cpu_sample, cpu_used


def test_per_thread_nanoseconds_when_every_thread_is_still_there() -> None:
    before = CpuSample(1.00, {(1, 1): 5_000_000_000, (1, 2): 1_000_000_000})
    # a thread started in the window counts from zero; ticks (10 ms) would say 0.10 s
    after = CpuSample(1.10, {(1, 1): 5_060_000_000, (1, 2): 1_030_000_000, (1, 3): 7_000_000})
    assert math.isclose(cpu_used(before, after), 0.097)


def test_clock_ticks_when_a_thread_exited_in_the_window() -> None:
    before = CpuSample(1.00, {(1, 1): 5_000_000_000, (1, 2): 1_000_000_000})
    after = CpuSample(1.20, {(1, 1): 5_060_000_000})
    assert math.isclose(cpu_used(before, after), 0.20)


def test_clock_ticks_without_schedstat() -> None:
    assert math.isclose(cpu_used(CpuSample(2.0, {}), CpuSample(2.5, {})), 0.5)


def test_sample_of_this_process_sees_its_own_thread() -> None:
    sample = cpu_sample(os.getpid())
    assert sample.ticks_s > 0
    if sample.tasks:  # the kernel has schedstat
        assert (os.getpid(), os.getpid()) in sample.tasks

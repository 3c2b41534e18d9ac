"""Every benchmark case: numerics against the reference first, then timing (see conftest.py)."""

import pytest

from fcn_fast.bench.cases import DTYPE_NAMES


def pedantic_runner(benchmark):
    """fcn_fast.bench.timing's runner protocol on top of pytest-benchmark's pedantic mode."""

    def run(target, setup, rounds, warmup):
        benchmark.pedantic(target, setup=setup, rounds=rounds, warmup_rounds=warmup, iterations=1)

    return run


def test_benchmark(benchmark, bench_session, bench_run):
    case, backend, dtype, mode = bench_run
    benchmark.group = f"{case.op} {case.label} {mode} {DTYPE_NAMES[dtype]}"
    result = bench_session.run(case, backend, dtype, mode, runner=pedantic_runner(benchmark))
    benchmark.extra_info.update(result.extra_info())
    if result.status == "skipped":
        pytest.skip(result.reason)
    assert result.status == "ok", f"{case.op} {case.shape} {backend}: {result.reason}"

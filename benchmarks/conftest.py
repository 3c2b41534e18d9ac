"""pytest-benchmark front end of fcn_fast.bench: one test per (case, backend, dtype, mode).

    pytest benchmarks/ --benchmark-only                      default sweep (CPU: < 10 min)
    pytest benchmarks/ --benchmark-only --bench-size=quick   smoke run
    pytest benchmarks/ --benchmark-only --bench-size=full    the long sweep
    --bench-device=cpu|cuda   (default: cuda when a GPU is visible)
    --bench-threads=N         torch CPU threads (default: torch's default; reported)

Each test checks numerics against the reference first (a mismatch fails the test),
then times the step through benchmark.pedantic and stores the figures in the
benchmark's extra_info (see fcn_fast.bench.runner.Result). The cases, timing and
figures are those of `python -m fcn_fast.bench` (fcn_fast/bench/).
"""

import pytest
import torch

from fcn_fast.bench.cases import DTYPE_NAMES, SIZES, select


def pytest_addoption(parser):
    group = parser.getgroup("fcn_fast benchmarks")
    group.addoption("--bench-size", choices=SIZES, default="default", help="benchmark sweep size")
    group.addoption("--bench-device", choices=("cpu", "cuda"), default=None)
    group.addoption("--bench-threads", type=int, default=None)


def _device(config):
    return config.getoption("--bench-device") or ("cuda" if torch.cuda.is_available() else "cpu")


def pytest_generate_tests(metafunc):
    if "bench_run" not in metafunc.fixturenames:
        return
    config = metafunc.config
    runs = select(config.getoption("--bench-size"), _device(config))
    ids = [f"{c.op}-{c.label}-{m}-{DTYPE_NAMES[d]}-{b}" for c, b, d, m in runs]
    metafunc.parametrize("bench_run", runs, ids=ids)


@pytest.fixture(scope="session")
def bench_session(pytestconfig):
    from fcn_fast.bench.runner import Bench

    device = _device(pytestconfig)
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("--bench-device=cuda but no CUDA GPU is visible")
    return Bench(
        device, pytestconfig.getoption("--bench-size"), pytestconfig.getoption("--bench-threads")
    )

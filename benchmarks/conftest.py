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


_SESSION = {}


@pytest.fixture(scope="session")
def bench_session(pytestconfig):
    from fcn_fast.bench.runner import Bench

    device = _device(pytestconfig)
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("--bench-device=cuda but no CUDA GPU is visible")
    size = pytestconfig.getoption("--bench-size")
    _SESSION["bench"] = Bench(device, size, pytestconfig.getoption("--bench-threads"))
    return _SESSION["bench"]


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own tables
def pytest_terminal_summary(terminalreporter):
    """The report's table (op, backend, shape, dtype, ms, GB/s, % copy, x ref, numerics)."""
    bench = _SESSION.get("bench")
    if bench is None or not bench.results:
        return
    from fcn_fast.bench import report

    meta = bench.environment()
    terminalreporter.section(f"fcn_fast benchmarks: {report.describe_machine(meta)}")
    terminalreporter.write_line(report.text_table(bench.results))
    terminalreporter.write_line(f"{report.summary(bench.results)}; {meta['timing']}")

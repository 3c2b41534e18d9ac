"""fcn_fast's benchmark suite: shared by `pytest benchmarks/` and `python -m fcn_fast.bench`.

cases   the registry of benchmark cases (op, shape, inputs, step, minimum bytes)
timing  warm-up + median timing (CUDA events with L2 flush; perf_counter on CPU), copy, memory
runner  Bench: numerics against the reference first, then the figures of one row
report  console / markdown / JSON / plot / README rendering
cli     the command line (python -m fcn_fast.bench, fcn-fast bench)
"""

from fcn_fast.bench.cases import CASES, Case, ModelCase, OpCase, register, select
from fcn_fast.bench.runner import Bench, Result

__all__ = ["CASES", "Bench", "Case", "ModelCase", "OpCase", "Result", "register", "select"]

"""The `fcn-fast` command.

fcn-fast bench [...]     the benchmark report (same as python -m fcn_fast.bench)
fcn-fast backends        which backends run on this machine, and why the others don't
fcn-fast table1 [...]    the FCN paper's Table 1 on this machine
fcn-fast train / eval / predict / export / make-synthetic   (fcn_fast.train.cli)
"""

from __future__ import annotations

import sys

USAGE = """usage: fcn-fast COMMAND [...]

commands:
  bench [...]   run the benchmark suite and print the table (fcn-fast bench --help)
  backends      which backends run on this machine, and why the others don't
  table1 [...]  the FCN paper's Table 1 on this machine (fcn-fast table1 --help)
  train [...]   train an FCN (single process, or every process under torchrun)
  eval [...]    the four FCN metrics and per-class IU of a checkpoint on a split
  predict [...] label PNGs (VOC palette) and colour overlays for images (PyTorch or --onnx)
  export [...]  a checkpoint to ONNX, for onnxruntime / TensorRT (fcn-fast export --help)
  make-synthetic DIR [...]  write a procedurally drawn dataset in the VOC layout
"""


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "bench":
        from fcn_fast.bench.cli import main as bench_main

        return bench_main(rest, prog="fcn-fast bench")
    if command in ("train", "eval", "predict", "export", "make-synthetic"):
        from fcn_fast.train.cli import main as train_cli_main

        return train_cli_main(command, rest)
    if command == "backends":
        from fcn_fast import available_backends

        for name, status in available_backends().items():
            print(f"{name:10} {'yes' if status.available else 'no ':3}  {status.reason}")
        return 0
    if command == "table1":
        from fcn_fast.table1 import main as table1_main

        return table1_main(rest)
    print(f"fcn-fast: unknown command {command!r}\n\n{USAGE}", file=sys.stderr, end="")
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""What the GPU run needs, checked in seconds before anything is built (issue 25).

    python benchmarks/preflight.py            print each tool: ok / missing / too old, version
    python benchmarks/preflight.py --cuda     the CUDA build's needs too (nvcc, a CUDA torch)
    python benchmarks/preflight.py --json F   the same as JSON (gpu_first.sh keeps it)
    python benchmarks/preflight.py --which ncu    the tool's path (exit 1 if absent)
    python benchmarks/preflight.py --built    exit 0 if fcn_fast._C is built with CUDA kernels
                                              and newer than every source (a rebuild can wait)

Exit status 1 only when something the build needs is missing or too old: Python >= 3.10,
torch, setuptools >= 77 (pyproject.toml: with an older one `pip install -e .` and the
`setup.py build_ext` fallback both fail), a C++ compiler; with --cuda also nvcc and a
CUDA build of torch. The rest (ninja, pytest, pytest-xdist, the driver, compute-sanitizer,
ncu) is printed as missing, not failed: without ninja the build is serial (60-130 s), without
xdist the tests run in one process, without the others their steps are skipped.

Standalone: it imports neither fcn_fast nor (until the last check) torch, so it runs before
the build and names a missing tool instead of failing on an import.
"""

from __future__ import annotations

import argparse
import glob
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys

SETUPTOOLS_MIN = (77,)
PYTHON_MIN = (3, 10)


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def _package(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cuda_home() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        return home
    nvcc = shutil.which("nvcc")
    if nvcc:
        return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    return "/usr/local/cuda" if os.path.isdir("/usr/local/cuda") else None


def which(tool: str) -> str | None:
    """The tool on PATH, else where a CUDA toolkit or Nsight Compute keeps it."""
    found = shutil.which(tool)
    if found:
        return found
    home = _cuda_home()
    places = []
    for root in dict.fromkeys(filter(None, (home, "/usr/local/cuda"))):
        places += [os.path.join(root, "bin", tool), os.path.join(root, tool, tool)]
        places += sorted(glob.glob(os.path.join(root, "nsight-compute*", tool)), reverse=True)
    places += sorted(glob.glob(f"/opt/nvidia/nsight-compute/*/{tool}"), reverse=True)
    return next((p for p in places if os.path.isfile(p) and os.access(p, os.X_OK)), None)


def _run(command: list[str], timeout: float = 20) -> str | None:
    """The command's output, or None if it cannot run or fails."""
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (out.stdout or out.stderr).strip()
    return text if out.returncode == 0 else None


def _last_line(text: str | None) -> str | None:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else None


def _tool_version(tool: str, first: bool = False) -> tuple[str | None, str | None]:
    """(path, version line): the last line of `TOOL --version` (nvcc, ncu, compute-sanitizer
    end with it), or the first (compilers)."""
    path = which(tool)
    if path is None:
        return None, None
    out = _run([path, "--version"]) or ""
    line = out.splitlines()[0].strip() if first and out else _last_line(out)
    return path, line or "version unknown"


def check(cuda: bool = False) -> list[dict]:
    """One entry per tool: name, status (ok | missing | old | no-cuda), version, need, note."""
    rows = []

    def add(name, version, need, note, status=None):
        rows.append(
            {
                "name": name,
                "status": status or ("ok" if version else "missing"),
                "version": version,
                "need": need,  # "build" (exit 1 without it) or "optional"
                "note": note,
            }
        )

    python = ".".join(map(str, sys.version_info[:3]))
    add("python", python, "build", ">= 3.10", None if sys.version_info >= PYTHON_MIN else "old")
    setuptools = _package("setuptools")
    add(
        "setuptools",
        setuptools,
        "build",
        ">= 77: pip install -e . and setup.py build_ext fail with an older one",
        "old" if setuptools and _version_tuple(setuptools) < SETUPTOOLS_MIN else None,
    )
    add("wheel", _package("wheel"), "optional", "pyproject's build requirement (bdist_wheel)")
    compiler = os.environ.get("CXX") or next(
        (c for c in ("c++", "g++", "clang++") if shutil.which(c)), "c++"
    )
    compiler_version = _tool_version(compiler, first=True)[1]
    add(f"C++ compiler ({compiler})", compiler_version, "build", "the CPU kernels")
    ninja = _tool_version("ninja")[1]
    add("ninja", ninja, "optional", "parallel build (MAX_JOBS); without it serial, 60-130 s")
    nvcc_path, nvcc = _tool_version("nvcc")
    add("nvcc", nvcc, "build" if cuda else "optional", nvcc_path or "the CUDA kernels")
    add("pytest", _package("pytest"), "optional", "the test steps")
    add("pytest-xdist", _package("pytest-xdist"), "optional", "pytest -n: tests in parallel")
    smi = _run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    )
    add("driver (nvidia-smi)", _last_line(smi), "optional", "a visible GPU")
    for tool, note in (("compute-sanitizer", "racecheck, memcheck"), ("ncu", "Nsight Compute")):
        path, version = _tool_version(tool)
        add(tool, version, "optional", path or note)
    triton = _package("triton")
    add("triton", triton, "optional", "the triton backend")
    torch_version, torch_cuda = _torch()
    add(
        "torch",
        torch_version,
        "build",
        f"CUDA {torch_cuda}" if torch_cuda else "a CPU build: no CUDA kernels",
        "no-cuda" if cuda and torch_version and not torch_cuda else None,
    )
    return rows


def _torch() -> tuple[str | None, str | None]:
    """(torch version, CUDA version it was built with), without importing it in this process
    (a broken install must not take the preflight down)."""
    out = _run(
        [sys.executable, "-c", "import torch; print(torch.__version__, torch.version.cuda)"], 60
    )
    if not out:
        return None, None
    version, cuda = _last_line(out).split()[:2]
    return version, None if cuda == "None" else cuda


def stale_build(root: str) -> str | None:
    """None if fcn_fast._C in `root` imports with its CUDA kernels and is newer than setup.py
    and every file under csrc/; else why not."""
    code = "import fcn_fast._C as c; print(c.__file__); print(bool(getattr(c, 'with_cuda', 0)))"
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as error:
        return f"cannot run {sys.executable}: {error}"
    if out.returncode != 0:
        return "fcn_fast._C does not import: " + (_last_line(out.stderr) or "?")
    library, with_cuda = out.stdout.split()[-2:]
    if with_cuda != "True":
        return f"{library} has no CUDA kernels"
    sources = [os.path.join(root, "setup.py")]
    sources += glob.glob(os.path.join(root, "csrc", "**", "*"), recursive=True)
    newer = [s for s in sources if os.path.getmtime(s) > os.path.getmtime(library)]
    if newer:
        return f"{len(newer)} sources newer than {library}, e.g. {os.path.relpath(newer[0], root)}"
    return None


def failures(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["need"] == "build" and r["status"] != "ok"]


def render(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        status = r["status"] if r["status"] == "ok" else r["status"].upper()
        need = "needed" if r["need"] == "build" else "optional"
        lines.append(f"  {status:<8} {r['name']:<24} {r['version'] or '-':<44} {need}: {r['note']}")
    failed = failures(rows)
    missing = [r["name"] for r in rows if r["need"] != "build" and r["status"] != "ok"]
    if failed:
        verdict = "FAILED: " + ", ".join(f"{r['name']} {r['status']}" for r in failed)
    else:
        verdict = "ok" + (f" (optional, missing: {', '.join(missing)})" if missing else "")
    return "\n".join(["preflight (benchmarks/preflight.py):", *lines, f"preflight: {verdict}"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cuda", action="store_true", help="also require nvcc and a CUDA torch")
    p.add_argument("--json", metavar="PATH", help="write the checks as JSON")
    p.add_argument("--which", metavar="TOOL", help="print the tool's path and exit")
    p.add_argument("--built", action="store_true", help="is fcn_fast._C built with CUDA, fresh?")
    args = p.parse_args(argv)
    if args.built:
        reason = stale_build(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        print(reason or "fcn_fast._C is built with CUDA kernels and newer than its sources")
        return 1 if reason else 0
    if args.which:
        path = which(args.which)
        if path is None:
            print(f"{args.which}: not found on PATH or under the CUDA toolkit", file=sys.stderr)
            return 1
        print(path)
        return 0
    rows = check(cuda=args.cuda)
    print(render(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 1 if failures(rows) else 0


if __name__ == "__main__":
    sys.exit(main())

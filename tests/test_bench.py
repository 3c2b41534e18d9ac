"""The benchmark suite's own code: registry, numerics gate, report, JSON, plot, README, CLI.

Nothing here is timed: the runs use the `quick` shapes and only check that the
figures are produced, parse back, and that a wrong kernel fails its row.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

import fcn_fast
from fcn_fast import __main__ as fcn_main
from fcn_fast.bench import cases, cli, report, timing
from fcn_fast.bench.runner import Bench, compare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

needs_cpu_backend = pytest.mark.skipif(
    not fcn_fast.available_backends()["cpu"].available, reason="C++ extension not built"
)


@pytest.fixture(scope="module")
def quick_json(tmp_path_factory):
    """One quick run of the whole CLI (every op in this build), written as JSON and markdown."""
    folder = tmp_path_factory.mktemp("quick")
    path, md = str(folder / "quick.json"), str(folder / "quick.md")
    rc = cli.main(["--quick", "--device", "cpu", "-q", "--json", path, "--markdown", md])
    return rc, path, md


@needs_cpu_backend
def test_quick_run_passes_and_json_round_trips(quick_json, tmp_path):
    rc, path, md = quick_json
    assert rc == 0
    meta, results = report.load_json(path)
    expected = cases.select("quick", "cpu")
    assert [(r.op, r.case, r.backend, r.mode) for r in results] == [
        (c.op, c.label, b, m) for c, b, _, m in expected
    ]
    for key in ("date", "torch", "threads", "device_name", "timing", "memory", "command"):
        assert meta[key], key
    for r in results:
        assert r.status == "ok", r
        assert r.numerics == "reference" or r.numerics.startswith("OK"), r
        assert r.ms > 0 and r.reference_ms > 0 and r.rounds >= 1
        assert r.speedup == pytest.approx(r.reference_ms / r.ms)
        assert r.threads == torch.get_num_threads()
        if r.bytes is not None:
            assert r.gbps == pytest.approx(r.bytes / r.ms / 1e6)
            assert r.pct_of_copy == pytest.approx(100 * r.copy_ms / r.ms)
    # Peak memory is measured, not guessed: a cpu forward allocates at least its output.
    final = next(r for r in results if r.case == "quick-final" and r.backend == "cpu")
    assert final.peak_mem_bytes >= 1 * 21 * 73 * 73 * 4
    assert all(r.held_mem_bytes > 0 for r in results if r.mode == "fwdbwd")
    # Round trip: what is written reads back identically and renders the same table.
    again = tmp_path / "again.json"
    report.write_json(str(again), meta, results)
    meta2, results2 = report.load_json(str(again))
    assert (meta2, results2) == (meta, results)
    assert report.text_table(results2) == report.text_table(results)
    with open(md) as f:
        assert report.markdown_table(results) in f.read()


@needs_cpu_backend
def test_table_has_every_column(quick_json, capsys):
    _, path, _ = quick_json
    assert cli.main(["show", path]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("op "))
    for column in ("backend", "shape", "dtype", "ms", "GB/s", "% copy", "× ref", "numerics"):
        assert column in header
    assert "upsample_skip" in out and "cpu" in out and "reference" in out


def _wrong_forward(monkeypatch, how):
    """Replace fcn_fast.upsample_skip by one whose non-reference result is slightly wrong."""
    real = fcn_fast.upsample_skip

    class ScaleGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.view_as(x)

        @staticmethod
        def backward(ctx, grad):
            return grad * 1.001

    def wrong(coarse, skip=None, *, backend="auto", **kw):
        if backend == "reference":
            return real(coarse, skip, backend=backend, **kw)
        if how == "raises":
            raise RuntimeError("kernel exploded")
        if how == "backward-only":
            return real(ScaleGrad.apply(coarse), skip, backend=backend, **kw)
        return real(coarse, skip, backend=backend, **kw) * 1.001

    monkeypatch.setattr(fcn_fast, "upsample_skip", wrong)


@needs_cpu_backend
@pytest.mark.parametrize("how", ["forward", "backward-only", "raises"])
def test_numerics_failure_fails_the_row(monkeypatch, tmp_path, how):
    _wrong_forward(monkeypatch, how)
    path = str(tmp_path / "bad.json")
    assert cli.main(["--quick", "--ops", "upsample_skip", "-q", "--json", path]) == 1
    _, results = report.load_json(path)
    for r in results:
        if r.backend == "reference" or (how == "backward-only" and r.mode == "fwd"):
            assert r.status == "ok", r
        else:
            assert r.status == "failed" and r.numerics.startswith("FAIL"), r
            assert r.ms is None  # never timed
            assert ("kernel exploded" in r.reason) == (how == "raises")


def test_compare_catches_nan_shape_and_error():
    ref = (torch.tensor([1.0, -2.0, 3.0]),)
    assert compare((ref[0].clone(),), ref, 1e-5)[0]
    assert compare((ref[0] + 1e-6,), ref, 1e-5)[0]
    assert not compare((ref[0] + 1e-3,), ref, 1e-5)[0]
    assert not compare((torch.tensor([1.0, float("nan"), 3.0]),), ref, 1e-5)[0]
    assert not compare((ref[0][:2],), ref, 1e-5)[0]
    assert not compare((ref[0], ref[0]), ref, 1e-5)[0]


def test_exact_fp32_restores_the_tf32_flags():
    from fcn_fast.bench.runner import exact_fp32

    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    with exact_fp32():
        assert not torch.backends.cudnn.allow_tf32
        assert not torch.backends.cuda.matmul.allow_tf32
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


def test_registry_and_selection():
    runs = cases.select("default", "cpu")
    assert runs, "the default CPU sweep is empty"
    keys = [(c.op, c.label) for c, *_ in runs]
    assert ("upsample_skip", "fcn8s-final") in keys and ("interpolate_add", "fpn-p4-p3") in keys
    # The reference comes first in every (case, dtype, mode) group: its time is the baseline.
    seen = set()
    for case, backend, dtype, mode in runs:
        group = (case.key, dtype, mode)
        assert (backend == "reference") == (group not in seen)
        seen.add(group)
    for case, backend, dtype, mode in runs:
        assert dtype == torch.float32
        assert backend in ("reference", "unfused", "cpu")
        assert backend != "unfused" or "unfused" in case.extra_baselines
        if isinstance(case, cases.OpCase):
            assert case.min_bytes(dtype, mode) > 0
    head = next(c for c in cases.CASES if c.key == "upsample_skip/fcn8s-final")
    assert head.min_bytes(torch.float32, "fwdbwd") > head.min_bytes(torch.float32, "fwd")
    gpu = cases.select("default", "cuda")
    assert {b for _, b, _, _ in gpu} == {"reference", "compile", "unfused", "cuda", "triton"}
    assert {d for _, _, d, _ in gpu} == {torch.float32, torch.bfloat16}
    # torch.compile (10-30 s a row) only where a target compares with it.
    compiled = {(c.key, d) for c, b, d, _ in gpu if b == "compile"}
    assert compiled == {
        ("upsample_skip/large", torch.float32),
        ("interpolate_add/large", torch.float32),
        ("pixel_cross_entropy/large", torch.float32),
        ("interpolate_cross_entropy/ade20k-512", torch.bfloat16),
    }
    full = cases.select("full", "cuda")
    assert {d for _, _, d, _ in full} == {torch.float32, torch.bfloat16, torch.float16}
    large = [c for c, *_ in gpu if c.label == "large" and c.op == "upsample_skip"]
    assert large and "N16" in large[0].shape and "1024" in large[0].shape
    with pytest.raises(ValueError, match="size"):
        cases.select("huge", "cpu")


def test_fcn8s_final_head_bytes():
    case = next(c for c in cases.CASES if c.key == "upsample_skip/fcn8s-final")
    coarse, out = 4 * 21 * 70 * 70, 4 * 21 * 500 * 500
    assert case.min_bytes(torch.float32, "fwd") == 4 * (coarse + out)
    assert case.min_bytes(torch.float32, "fwdbwd") == 4 * (coarse + out) * 2
    assert case.min_bytes(torch.bfloat16, "fwd") == 2 * (coarse + out)


def test_plot_message_when_matplotlib_missing(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert not report.plot_available()
    assert cli.main(["--quick", "--plot", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err
    assert "matplotlib" in err and "pip install" in err
    assert not (tmp_path / "p.png").exists()


@needs_cpu_backend
def test_plot_is_written(quick_json, tmp_path):
    pytest.importorskip("matplotlib")
    _, path, _ = quick_json
    png = tmp_path / "speedup.png"
    assert cli.main(["show", path, "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_cpu_backend
def test_readme_section_uses_only_committed_results(quick_json, tmp_path, capsys):
    _, path, _ = quick_json
    meta, results = report.load_json(path)
    folder = tmp_path / "results"
    folder.mkdir()
    report.write_json(str(folder / "cpu-old.json"), {**meta, "date": "2000-01-01"}, results[:1])
    report.write_json(str(folder / "cpu-new.json"), meta, results)
    (folder / "notes.json").write_text(json.dumps({"something": "else"}))
    assert cli.main(["readme", "--results", str(folder)]) == 0
    text = capsys.readouterr().out
    assert "cpu-new.json" in text and "cpu-old.json" not in text
    assert report.markdown_table(results) in text
    assert "No GPU measurements have been committed for this version yet." in text
    assert "Predicted, not measured" not in text  # no model output in the folder
    # With the static model's output and no GPU run: its predictions, labelled as such.
    row = {
        "op": "pixel_cross_entropy", "case": "large", "mode": "fwd", "dtype": "fp32",
        "backend": "cuda", "instructions_per_element": 7.3,
        "h100": {"predicted_ms": 0.537, "predicted_pct_copy": 95.8, "bound": "memory"},
    }  # fmt: skip
    (folder / "model-sm90-2000-01-01.json").write_text(json.dumps({"rows": [row]}))
    text = report.readme_section(str(folder))
    assert "**Predicted, not measured**" in text
    assert "| pixel_cross_entropy | large | fwd | fp32 | cuda | 0.537 | 96 | memory |" in text
    gpu_meta = {**meta, "device": "cuda", "device_name": "Some GPU", "cuda": "12.8"}
    report.write_json(str(folder / "gpu.json"), gpu_meta, results[:2])
    text = report.readme_section(str(folder))
    assert "No GPU measurements" not in text and "Some GPU" in text
    assert "Predicted, not measured" not in text  # measured rows replace the predictions


def test_fcn_fast_command(capsys):
    assert fcn_main.main(["backends"]) == 0
    assert "reference" in capsys.readouterr().out
    assert fcn_main.main(["bench", "--quick", "--list"]) == 0
    assert "upsample_skip" in capsys.readouterr().out
    assert fcn_main.main(["nonsense"]) == 2
    assert fcn_main.main([]) == 2


def _pytest_benchmarks(*args, pythonpath=ROOT):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            os.path.join(ROOT, "benchmarks"),
            "--benchmark-only",
            "--bench-size=quick",
            "--bench-device=cpu",
            "-q",
            "-p",
            "no:cacheprovider",
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": pythonpath},
        timeout=300,
    )


@needs_cpu_backend
def test_pytest_benchmarks_quick_mode(tmp_path):
    """CI's smoke run of the main job: pytest benchmarks/ --benchmark-only --bench-size=quick."""
    out = tmp_path / "bench.json"
    proc = _pytest_benchmarks("-k", "upsample_skip", f"--benchmark-json={out}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "× ref" in proc.stdout  # the summary table
    data = json.loads(out.read_text())
    assert len(data["benchmarks"]) == len(cases.select("quick", "cpu", ops=["upsample_skip"]))
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        for key in ("backend", "shape", "dtype", "bytes", "gbps", "copy_ms", "pct_of_copy"):
            assert info[key] is not None, key
        assert info["speedup"] > 0 and info["threads"] >= 1 and "peak_mem_bytes" in info
        assert info["numerics"] == "reference" or info["numerics"].startswith("OK")


@needs_cpu_backend
def test_pytest_benchmarks_fail_on_a_wrong_kernel(tmp_path):
    (tmp_path / "wrong_kernel.py").write_text(
        "import fcn_fast\n"
        "real = fcn_fast.upsample_skip\n"
        "def wrong(coarse, skip=None, *, backend='auto', **kw):\n"
        "    out = real(coarse, skip, backend=backend, **kw)\n"
        "    return out if backend == 'reference' else out * 1.001\n"
        "fcn_fast.upsample_skip = wrong\n"
    )
    proc = _pytest_benchmarks(
        "-k", "upsample_skip-quick-skip-fwd-", "-p", "wrong_kernel", pythonpath=f"{ROOT}:{tmp_path}"
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 failed, 1 passed" in proc.stdout and "max rel err" in proc.stdout


# ---------------------------------------------------------------------------------------------
# The pixel_cross_entropy and FCN-8s cases on the real ops.


@needs_cpu_backend
def test_cross_entropy_and_model_cases():
    runs = cases.select("quick", "cpu", ops=["pixel_cross_entropy", "fcn8s"])
    assert {(c.op, m) for c, _, _, m in runs} == {
        ("pixel_cross_entropy", "fwd"),
        ("pixel_cross_entropy", "fwdbwd"),
        ("fcn8s", "fwd"),
        ("fcn8s", "train"),
    }
    model_case = next(c for c, *_ in runs if c.op == "fcn8s")
    assert model_case._model("cpu", torch.device("cpu"), torch.float32).width == cases.REDUCED_WIDTH
    bench = Bench("cpu", "quick")
    for case, backend, dtype, mode in runs:
        r = bench.run(case, backend, dtype, mode)
        assert r.status == "ok", r
        assert (r.bytes is None) == (case.op == "fcn8s")
    assert any(c.label == "voc-500" for c, *_ in cases.select("default", "cpu"))
    assert any(c.label == "vgg16-512" for c, *_ in cases.select("default", "cuda"))


@needs_cpu_backend
def test_low_precision_rows_report_speedup_over_fp32_reference():
    case = next(c for c, *_ in cases.select("quick", "cpu", ops=["pixel_cross_entropy"]))
    bench = Bench("cpu", "quick")
    fp32 = bench.run(case, "cpu", torch.float32, "fwd")
    bf16 = bench.run(case, "cpu", torch.bfloat16, "fwd")
    assert fp32.status == bf16.status == "ok", (fp32, bf16)
    assert fp32.speedup_vs_fp32_reference is None
    fp32_reference_ms = bench.reference_ms(case, torch.float32, "fwd")
    assert bf16.speedup_vs_fp32_reference == pytest.approx(fp32_reference_ms / bf16.ms)
    assert "speedup_vs_fp32_reference" in bf16.extra_info()


# ---------------------------------------------------------------------------------------------
# The fused heads' cases (issue 9), the overhead rows (issue 8), the plot, the command line.

FUSED_OPS = ("upsample_cross_entropy", "interpolate_cross_entropy", "upsample_argmax")


def _rows(size, device, **kw):
    return {
        (c.op, c.label, m, cases.DTYPE_NAMES[d], b)
        for c, b, d, m in cases.select(size, device, **kw)
    }


def test_issue_targets_have_their_rows():
    """Every row issue 9's targets and issue 8's overhead targets are read from is in the sweep."""
    cpu = _rows("default", "cpu")
    for backend in ("reference", "unfused", "cpu"):
        assert ("upsample_cross_entropy", "fcn8s-final", "fwdbwd", "fp32", backend) in cpu
        assert ("fcn8s", "reduced-224", "train", "fp32", backend) in cpu
    for op in ("upsample_skip", "interpolate_add", "pixel_cross_entropy"):
        for mode in ("fwd", "fwdbwd"):
            assert {(op, "overhead", mode, "fp32", b) for b in ("reference", "cpu")} <= cpu
    gpu = _rows("default", "cuda")
    for backend in ("reference", "unfused", "cuda", "triton"):
        for dtype in ("fp32", "bf16"):
            assert ("upsample_cross_entropy", "large", "fwdbwd", dtype, backend) in gpu
        assert ("upsample_argmax", "large", "fwd", "fp32", backend) in gpu
        assert ("fcn8s", "vgg16-512", "train", "bf16", backend) in gpu
    for backend in ("reference", "compile", "unfused", "cuda", "triton"):
        assert ("interpolate_cross_entropy", "ade20k-512", "fwdbwd", "bf16", backend) in gpu
    assert ("pixel_cross_entropy", "overhead", "fwd", "fp32", "triton") in gpu
    # The shapes the targets name.
    shapes = {c.key: c.shape for c, *_ in cases.select("default", "cuda")}
    assert shapes["upsample_cross_entropy/large"].startswith("N16 C21 132² x8 crop31 → 1024²")
    assert shapes["interpolate_cross_entropy/ade20k-512"].startswith("N16 C150 64² → 512²")
    assert "C150, N8 3x512x512" in shapes["fcn8s/vgg16-512"]
    assert "N4 C21 70² x8 crop31 → 500²" in next(
        c.shape for c, *_ in cases.select("default", "cpu", ops=["upsample_cross_entropy"])
    )
    # --quick (CI) covers every op of the registry, the new ones included.
    assert {c.op for c, *_ in cases.select("quick", "cpu")} == set(cases.op_names())
    assert set(FUSED_OPS) | {"interpolate_argmax"} <= set(cases.op_names())


def test_fused_head_bytes():
    """Loss: the low-resolution input and targets read once, the loss written; backward reads
    them again and the kept log-sum-exp, and writes the input's gradient. Argmax: input read,
    labels written. Never the full-resolution logits."""
    loss = next(c for c in cases.CASES if c.key == "upsample_cross_entropy/large")
    low, pixels = 16 * 21 * 132 * 132, 16 * 1024 * 1024
    fwd = 4 * low + 8 * pixels + 4
    assert (
        loss.min_bytes(torch.float32, "fwdbwd") == fwd + 4 * low + 8 * pixels + 4 * pixels + 4 * low
    )
    assert loss.min_bytes(torch.bfloat16, "fwdbwd") == (
        2 * low + 8 * pixels + 4 + 2 * low + 8 * pixels + 4 * pixels + 2 * low
    )
    argmax = next(c for c in cases.CASES if c.key == "upsample_argmax/large")
    assert argmax.min_bytes(torch.float32, "fwd") == 4 * low + 8 * pixels


def test_uint8_label_rows():
    """uint8 targets (issue 24 part 3): the large loss and fused-head rows again with uint8
    labels in the GPU default sweep (fp32 only: GPU time is scarce), a quick CPU row of each;
    their byte floors count 1 byte a label where int64 counts 8."""
    gpu, quick = _rows("default", "cuda"), _rows("quick", "cpu")
    for op, mode in (("pixel_cross_entropy", "fwdbwd"), ("upsample_cross_entropy", "fwdbwd")):
        for backend in ("reference", "cuda", "triton"):
            assert (op, "large-u8", mode, "fp32", backend) in gpu
        assert (op, "large-u8", mode, "bf16", "cuda") not in gpu
        assert (op, "quick-u8", mode, "fp32", "cpu") in quick
    by_key = {c.key: c for c in cases.CASES}
    pixels, c = 16 * 1024 * 1024, 21
    for label, label_bytes in (("large", 8), ("large-u8", 1)):
        loss = by_key[f"pixel_cross_entropy/{label}"]
        assert loss.min_bytes(torch.float32, "fwd") == 4 * pixels * c + label_bytes * pixels
    head, head8 = by_key["upsample_cross_entropy/large"], by_key["upsample_cross_entropy/large-u8"]
    saved = head.min_bytes(torch.float32, "fwdbwd") - head8.min_bytes(torch.float32, "fwdbwd")
    assert saved == 2 * 7 * pixels  # read in forward and backward
    assert "uint8 labels" in head8.shape
    for op in ("pixel_cross_entropy", "upsample_cross_entropy"):
        inputs = by_key[f"{op}/quick-u8"].inputs(torch.device("cpu"), torch.float32)
        assert inputs["target"].dtype == torch.uint8


def test_compare_labels_allows_rare_near_ties_only():
    want = (torch.zeros(1000, dtype=torch.int64),)
    assert cases.compare_labels((want[0].clone(),), want, 1e-3)[0]
    one = want[0].clone()
    one[7] = 3
    ok, share, _ = cases.compare_labels((one,), want, 1e-3)
    assert ok and share == pytest.approx(1e-3)
    ok, _, detail = cases.compare_labels((one,), want, 1e-4)
    assert not ok and "1 labels differ" in detail
    assert not cases.compare_labels((want[0].to(torch.uint8),), want, 1.0)[0]
    assert not cases.compare_labels((want[0][:10],), want, 1.0)[0]


@needs_cpu_backend
def test_fused_head_rows_report_speedup_over_unfused_and_memory():
    bench = Bench("cpu", "quick")
    runs = cases.select("quick", "cpu", ops=list(FUSED_OPS))
    for key in dict.fromkeys(case.key for case, *_ in runs):  # upsample_cross_entropy/quick-u8 too
        rows = [bench.run(*run) for run in runs if run[0].key == key]
        assert [r.backend for r in rows] == ["reference", "unfused", "cpu"], key
        for r in rows:
            assert r.status == "ok", r
            assert r.peak_mem_pct_of_reference is not None
        for r in rows[1:]:
            assert r.speedup_vs_unfused == pytest.approx(r.unfused_ms / r.ms)
        assert rows[0].peak_mem_pct_of_reference == pytest.approx(100.0)
        assert rows[0].speedup_vs_unfused is None and rows[1].speedup_vs_unfused == 1.0
        assert rows[1].numerics.startswith("OK")  # checked like a kernel, never failed as one
    # No such column for ops without an unfused baseline.
    plain = bench.run(*cases.select("quick", "cpu", ops=["pixel_cross_entropy"])[1])
    assert plain.unfused_ms is None and plain.speedup_vs_unfused is None


@needs_cpu_backend
def test_a_wrong_baseline_is_reported_not_failed(monkeypatch):
    """The unfused ops are a baseline: off the oracle they are timed and say so."""
    real = fcn_fast.pixel_cross_entropy
    monkeypatch.setattr(fcn_fast, "pixel_cross_entropy", lambda *a, **kw: real(*a, **kw) * 1.01)
    run = next(
        r for r in cases.select("quick", "cpu", ops=["upsample_cross_entropy"]) if r[1] == "unfused"
    )
    r = Bench("cpu", "quick").run(*run)
    assert r.status == "ok" and r.numerics.startswith("baseline") and r.ms > 0


@needs_cpu_backend
def test_a_wrong_fused_kernel_fails_its_row(monkeypatch):
    real = fcn_fast.upsample_argmax

    def wrong(coarse, **kw):
        return (real(coarse, **kw) + 1) % coarse.shape[1]

    monkeypatch.setattr(fcn_fast, "upsample_argmax", wrong)
    rows = [
        Bench("cpu", "quick").run(*run)
        for run in cases.select("quick", "cpu", ops=["upsample_argmax"])
    ]
    assert [(r.backend, r.status) for r in rows] == [
        ("reference", "ok"),
        ("unfused", "ok"),
        ("cpu", "failed"),
    ]
    assert "labels differ" in rows[2].reason


def test_host_bound_rows_time_many_rounds():
    """A call of a few microseconds is timed over thousands of rounds within the same budget;
    an ordinary step keeps the plan's round cap."""
    for device in ("cpu", "cuda"):
        plan = timing.PLANS[(device, "default")]
        tiny = plan.host_bound(device)
        assert tiny.budget_s == plan.budget_s
        assert tiny.rounds(10e-6) >= 1000 > plan.rounds(10e-6)
        assert tiny.rounds(1.0) == plan.rounds(1.0)
    overhead = [c for c in cases.CASES if c.label == "overhead"]
    assert {c.op for c in overhead} == {"upsample_skip", "interpolate_add", "pixel_cross_entropy"}
    assert all(c.host_bound and "N1 C3 4" in c.shape for c in overhead)


@needs_cpu_backend
def test_plot_has_one_panel_per_op_and_fits_1600_px(quick_json, tmp_path):
    pytest.importorskip("matplotlib")
    _, path, _ = quick_json
    _, results = report.load_json(path)
    panels = report._panels([r for r in results if r.status == "ok"])
    titles = [title for title, _, _ in panels]
    assert titles[:-1] == [op for op in cases.op_names() if any(r.op == op for r in results)]
    assert titles[-1].startswith("host overhead")
    metrics = {title: metric for title, metric, _ in panels}
    assert metrics["upsample_skip"] == "pct_of_copy" and metrics["fcn8s"] == "speedup"
    png = tmp_path / "plot.png"
    report.plot_results(results, str(png), "title")
    header = png.read_bytes()[:24]
    width, height = int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
    assert width == report.PLOT_WIDTH_PX and height < 4 * width


@pytest.mark.parametrize("ops", ["bogus", "upsample"])
def test_unknown_op_fails_with_the_valid_names(ops, capsys):
    for args in (["--list", "--ops", ops], ["--quick", "--ops", f"upsample_skip,{ops}"]):
        assert cli.main(args) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert f"--ops: unknown {ops!r}" in captured.err
        assert all(op in captured.err for op in cases.op_names())
    assert cli.main(["--list", "--backends", "cuda,gpu"]) == 2
    assert "unknown 'gpu'" in capsys.readouterr().err


def test_show_errors_are_one_line(tmp_path, capsys):
    """A missing or foreign file is one line on stderr and exit status 2, not a traceback."""
    other = tmp_path / "other.json"
    other.write_text(json.dumps([1, 2]))
    for path, why in (
        (tmp_path / "missing.json", "No such file"),
        (os.path.join(ROOT, "README.md"), "not JSON"),
        (other, "not a fcn_fast.bench results file"),
    ):
        assert cli.main(["show", str(path)], prog="fcn-fast bench") == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith("fcn-fast bench show: ") and captured.err.count("\n") == 1
        assert why in captured.err and str(path) in captured.err


def test_help_names_the_other_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"], prog="fcn-fast bench")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "fcn-fast bench show FILE.json" in out and "fcn-fast bench readme" in out
    assert "\n  show FILE.json" in out and "\n  readme" in out


def _gpu_row(op, backend, ms, case="large", dtype="fp32", mode="fwd", numerics="OK (1e-07)"):
    from fcn_fast.bench.runner import Result

    return Result(op=op, case=case, shape="N1", backend=backend, dtype=dtype, mode=mode,
                  device="cuda", numerics=numerics, ms=ms)  # fmt: skip


def test_prefer_orders_kernels_by_geometric_mean_and_lists_slow_rows(tmp_path, capsys):
    """`prefer` ranks cuda and triton per op by the geometric mean of their times over the
    rows both passed (not by wins: triton wins 2 of 3 rows here, cuda is faster overall), skips
    failed rows and non-ops (the model rows), and names each row where the first backend is
    slower than eager or torch.compile."""
    rows = [
        _gpu_row("upsample_skip", "reference", 5.0, case="a"),
        _gpu_row("upsample_skip", "compile", 1.5, case="a"),
        _gpu_row("upsample_skip", "cuda", 1.0, case="a"),
        _gpu_row("upsample_skip", "triton", 4.0, case="a"),
        _gpu_row("upsample_skip", "reference", 5.0, case="b"),
        _gpu_row("upsample_skip", "cuda", 2.0, case="b"),
        _gpu_row("upsample_skip", "triton", 1.9, case="b"),
        _gpu_row("upsample_skip", "reference", 1.0, case="c"),
        _gpu_row("upsample_skip", "cuda", 2.0, case="c"),
        _gpu_row("upsample_skip", "triton", 1.8, case="c"),
        # A failed triton row is not counted: were it, triton would win this op.
        _gpu_row("upsample_skip", "cuda", 9.0, case="d"),
        _gpu_row("upsample_skip", "triton", 0.1, case="d", numerics="FAIL: wrong"),
        _gpu_row("pixel_cross_entropy", "cuda", 3.0),
        _gpu_row("pixel_cross_entropy", "triton", 1.0),
        _gpu_row("pixel_cross_entropy", "reference", 2.0),
        _gpu_row("fcn8s", "cuda", 1.0),
        _gpu_row("fcn8s", "triton", 2.0),
    ]
    assert report.gpu_preference(rows) == {
        "upsample_skip": ("cuda", "triton"),
        "pixel_cross_entropy": ("triton", "cuda"),
    }
    path = str(tmp_path / "gpu.json")
    report.write_json(path, {"device": "cuda"}, rows)
    assert cli.main(["prefer", path]) == 0
    out = capsys.readouterr().out
    assert "'upsample_skip': ('cuda', 'triton')," in out and "fcn8s" not in out
    # cuda / triton: (1 * 2 * 2) / (4 * 1.9 * 1.8) under a cube root
    assert "cuda takes 0.66x triton's time (geometric mean of 3 rows; faster in 1)" in out
    assert "upsample_skip: cuda slower than eager or compile in 1 rows\n" in out
    assert "    c fp32 fwd: 2 ms, reference 1 ms" in out
    assert "pixel_cross_entropy: triton slower than eager or compile in 0 rows" in out


def test_prefer_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["prefer", str(tmp_path / "missing.json")], prog="fcn-fast bench") == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("fcn-fast bench prefer: ") and captured.err.count("\n") == 1
    cpu = str(tmp_path / "cpu.json")
    report.write_json(cpu, {"device": "cpu"}, [])
    assert cli.main(["prefer", cpu]) == 0
    assert "No GPU rows" in capsys.readouterr().out

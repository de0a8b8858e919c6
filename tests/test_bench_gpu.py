"""bench.gpu's dry run: the GPU benchmark's code paths on tiny shapes on the CPU, and its report."""

import json
import math
import subprocess
import sys

import pytest

from bench import gpu

pytestmark = pytest.mark.slow

PRETRAIN = [f"pretrain:{label}" for label in gpu.MODELS]


def _finite_positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_dry_run_reports_every_section(tmp_path):
    out = tmp_path / "gpu.json"
    assert gpu.main(["--dry", "--inline", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["sections"]) == {name for name, _ in gpu.SECTIONS}
    assert report["device"]["dry"] is True and report["device"]["torch"]
    for name in PRETRAIN:
        section = report["sections"][name]
        assert section["status"] == "ok", section
        assert set(section["cases"]) == set(gpu.VARIANTS)
        for case in section["cases"].values():
            assert _finite_positive(case["images_per_s"]) and case["steps_timed"] >= 1
            assert case["best_images_per_s"] >= case["images_per_s"]
            assert _finite_positive(case["flops_per_image"]) and _finite_positive(case["tflops"])
            assert case["mfu"] is None and case["peak_mem_gib"] is None  # no peak, no CUDA on a CPU
            assert case["batch"] in (2, 4)
    encoder = report["sections"]["encoder"]
    assert set(encoder["cases"]) == {"visible_only", "mask_token_in_encoder"}
    decode = report["sections"]["decode"]
    assert set(decode["cases"]) == {"gpu_decode", "gpu_decode_crop_resize", "cpu_loader_one_core"}
    assert decode["cases"]["cpu_loader_one_core"]["decoder"].startswith("mae_core.data.decode")
    summary = report["summary"]
    assert summary["encoder_flops_ratio"] > 1 and _finite_positive(summary["encoder_speedup"])
    for label in gpu.MODELS:
        assert _finite_positive(summary[label]["ours_bf16_vs_reference_fp16"])
        assert _finite_positive(summary["cpu_cores_per_gpu"][label])
    assert summary["targets"]["vit_l_mfu_ge_45pct"] is None  # no peak known for a CPU


def test_a_failing_section_is_reported_and_the_next_runs(tmp_path):
    """Sections run in their own processes: a failure keeps what the section measured before it."""
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gpu", "--dry", "--json", str(out), "--inject-failure", "reference_fp16",
         "--sections", "pretrain:ViT-L/16,encoder,decode"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    failed = report["sections"]["pretrain:ViT-L/16"]
    assert failed["status"] == "failed" and "injected failure in reference_fp16" in failed["error"]
    assert list(failed["cases"]) == ["ours_bf16"]  # measured before the failure, kept
    decode = report["sections"]["decode"]
    assert decode["status"] == "ok"
    assert not set(decode["needs_missing_on_gpu_machine"]) - {"simplejpeg"}  # decode.py: only if installed
    encoder = report["sections"]["encoder"]
    assert encoder["status"] == "ok"
    # In a process of its own, a section imports the model's modules and torch, nothing of the
    # cluster stack that a GPU machine's system Python lacks (webdataset, mlflow, ray, ...).
    assert encoder["needs_missing_on_gpu_machine"] == [], encoder["imports"]
    assert {"mae_core", "torch"} <= set(encoder["imports"])


def test_unknown_section_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as err:
        gpu.main(["--dry", "--sections", "pretrain:ViT-X"])
    assert err.value.code == 2 and "unknown section" in capsys.readouterr().err

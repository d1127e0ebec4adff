"""`tinyexaone bench` on a tiny synthetic compact file and on tiny float32 and BF16 Hugging Face
directories, so the command cannot rot (no speed is asserted)."""

import json
import os
import subprocess
import sys

import pytest

from reference_models import LAYOUTS, build_reference_model
from tinyexaone.cli.bench import print_table
from tinyexaone.integer_dot import PATHS
from tinyexaone.loading import open_model


def test_bench_runs_and_reports_every_figure(tmp_path, capsys):
    env = dict(os.environ, TINYEXAONE_CACHE=str(tmp_path / "cache"))
    done = subprocess.run(
        [sys.executable, "-m", "tinyexaone", "bench", "--synthetic", "tiny", "--quick", "--threads", "1", "--json"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for key in ("load_s", "first_token_cold_s", "first_token_warm_s", "prefill_16_tok_s", "prefill_64_tok_s",
                "prefill_128_tok_s", "decode_tok_s", "decode_after_64_tok_s", "decode_after_128_tok_s", "peak_rss_mb", "bandwidth_gbs", "floor_tok_s",
                "decode_pct_of_floor", "blas_gmacs", "prefill_floor_tok_s", "prefill_pct_of_floor", "float32_numpy_ratio"):
        assert isinstance(result[key], float) and result[key] > 0, key
    assert (tmp_path / "cache" / "bench" / "synthetic-tiny-int4-g32-e6-v4.tx").is_file()
    assert result["kernel_integer_dot"] in PATHS and result["kernel_cpu"]
    assert result["kernel_prefill"] in ("amx",) + PATHS
    assert result["kv_cache_type"] == "f16" and result["prefill_floor_tokens"] == 64
    assert result["weights_place"].startswith("in memory")
    print_table(result)  # the table form of the same figures
    table = capsys.readouterr().out
    for label in ("integer dot / prefill path", "prefill 64 tokens", "prefill compute floor", "prefill 64 tokens, % of compute floor",
                  "decode, % of floor", "peak RSS"):
        assert label in table, label


def test_bench_needs_a_model(tmp_path):
    done = subprocess.run([sys.executable, "-m", "tinyexaone", "bench"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and "exactly one of --model" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_bench_takes_a_hugging_face_directory(tmp_path, dtype):
    """Every weight class has nbytes and dequantize, so bench runs on float32 and BF16 checkpoints."""
    build_reference_model(tmp_path / "model", seed=2, dtype=dtype, **LAYOUTS["gqa4_odd_hidden"])
    done = subprocess.run(
        [sys.executable, "-m", "tinyexaone", "bench", "--model", str(tmp_path / "model"), "--quick", "--threads", "1",
         "--json"], capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["decode_tok_s"] > 0 and result["float32_numpy_ratio"] > 0
    weights = open_model(tmp_path / "model")[0].weights
    matrices = [weights.lm_head, *weights.layer_matrices()]
    n_weights = sum(m.shape[0] * m.shape[1] for m in matrices)
    bytes_per_weight = 4 if dtype == "float32" else 2
    assert result["decode_mb_per_token"] * 1e6 == pytest.approx(bytes_per_weight * n_weights)

"""`tinyexaone bench` on a tiny synthetic shape, so the command cannot rot (no speed is asserted)."""

import json
import os
import subprocess
import sys

from tinyexaone.cli.bench import print_table


def test_bench_runs_and_reports_every_figure(tmp_path, capsys):
    env = dict(os.environ, TINYEXAONE_CACHE=str(tmp_path / "cache"))
    done = subprocess.run(
        [sys.executable, "-m", "tinyexaone", "bench", "--synthetic", "tiny", "--quick", "--threads", "1", "--json"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for key in ("load_s", "first_token_cold_s", "first_token_warm_s", "prefill_16_tok_s", "prefill_64_tok_s",
                "decode_tok_s", "decode_after_64_tok_s", "peak_rss_mb", "bandwidth_gbs", "floor_tok_s",
                "decode_pct_of_floor", "blas_gmacs", "prefill_floor_tok_s", "prefill_pct_of_floor", "float32_numpy_ratio"):
        assert isinstance(result[key], float) and result[key] > 0, key
    assert (tmp_path / "cache" / "bench" / "synthetic-tiny-int4-g32.tx").is_file()
    print_table(result)  # the table form of the same figures
    table = capsys.readouterr().out
    for label in ("prefill 64 tokens", "prefill compute floor", "prefill 64 tokens, % of compute floor",
                  "decode, % of floor", "peak RSS"):
        assert label in table, label


def test_bench_needs_a_model(tmp_path):
    done = subprocess.run([sys.executable, "-m", "tinyexaone", "bench"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and "exactly one of --model" in done.stderr and "Traceback" not in done.stderr

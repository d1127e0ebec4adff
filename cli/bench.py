"""`tinyexaone bench`: end-to-end speed of a model, with the ratios that make it comparable.

One run measures, on a model (`--model`: a compact file, or a Hugging Face directory whose
BF16 weights run in place) or a synthetic compact file of the real EXAONE-4.0-1.2B
shape (`--synthetic 1.2b`, built once from random codes into a cache folder, no float
checkpoint in between): load time and where the weights are (read into memory, how much of them
in huge pages, or with `--mmap` in the file's memory map); time to first token of a short prompt in a fresh process
with an empty Numba cache (cold, compiles every kernel) and with the cache filled (warm); prefill
tok/s for 64, 512 and 2,048 tokens; decode tok/s for 128 tokens from an empty context and after
512 and 4,096 tokens; peak RSS at the 512-token context; the KV cache type (`--cache-type`, f16
by default, used by every run); the CPU, the integer dot product path and prefill's (amx where
AMX tiles run it); the memory-bandwidth
floor measured in the same run (a large NumPy read), which gives decode's achieved GB/s and %
of the floor; and the compute floor of prefill (NumPy BLAS float32 multiply-adds per second over
the layers' multiply-adds per token). As ratios in
the same run it times one decode token through the first layers: the float32 NumPy path of the
same weights dequantized and, when torch and transformers are installed, PyTorch bf16 layers. Prints a table, or JSON with `--json`. Absolute times drift on shared
machines; the ratios are what to compare.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

from tinyexaone.compact import FORMAT_VERSION
from tinyexaone.errors import TinyExaoneError
from tinyexaone.resident import huge_page_bytes

from .options import CACHE_TYPE_FLAG, MMAP_FLAG

SYNTHETIC_SHAPES = {
    "1.2b": {},
    # a few-MB model of the same layout, for tests that keep the command from rotting
    "tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=64, vocab_size=1024, layer_types=["full_attention"] * 2),
}
COMPARE_LAYERS = 2  # layers run by the float32 and PyTorch comparisons


def cache_folder() -> Path:
    base = os.environ.get("TINYEXAONE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tinyexaone")
    return Path(base) / "bench"


WRITE_SYNTHETIC_SCRIPT = """
import json, sys
from tinyexaone.quant.synthetic import write_synthetic_compact
write_synthetic_compact(sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
"""
# bits of the synthetic file's embedding (also its tied head) per layer bits: as in llama.cpp's own
# files it is compared with, whose Q4_0 keeps the tied embedding in q6_K (6.56 bits) and Q8_0 in q8_0
SYNTHETIC_EMBEDDING_BITS = {4: 6, 8: 8}


def synthetic_model(shape: str, bits: int, group_size: int) -> Path:
    """The cached synthetic compact file of `shape`, written on first use."""
    from tinyexaone.quant.synthetic import EXAONE_4_0_1_2B

    folder = cache_folder()
    folder.mkdir(parents=True, exist_ok=True)
    embedding_bits = SYNTHETIC_EMBEDDING_BITS[bits]
    path = folder / f"synthetic-{shape}-int{bits}-g{group_size}-e{embedding_bits}-v{FORMAT_VERSION}.tx"
    if not path.exists():
        click.echo(f"writing {path} (once) ...", err=True)
        # in a child process, so its buffers do not count in this process's peak RSS figures
        config = json.dumps(dict(EXAONE_4_0_1_2B, **SYNTHETIC_SHAPES[shape]))
        done = subprocess.run([sys.executable, "-c", WRITE_SYNTHETIC_SCRIPT, str(path), config, str(bits), str(group_size),
                               str(embedding_bits)],
                              capture_output=True, text=True, cwd=tempfile.gettempdir())
        if done.returncode:
            raise TinyExaoneError(f"could not write {path}: {(done.stderr.strip().splitlines() or ['no message'])[-1]}")
    return path


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def decode_bytes_per_token(model) -> int:
    """Weight bytes read for one decode token: every layer matrix and the head."""
    return model.weights.lm_head.nbytes + sum(m.nbytes for m in model.weights.layer_matrices())


def layer_macs_per_token(model) -> int:
    """Multiply-adds of one prompt token through the layer matrices (the head runs for the last
    token only, and attention's share is small at these lengths)."""
    return sum(m.shape[0] * m.shape[1] for m in model.weights.layer_matrices())


def time_prefill(model, n_tokens: int, rng, cache_type: str) -> float:
    ids = rng.integers(0, model.config.vocab_size, n_tokens)
    cache = model.new_cache(cache_type=cache_type)
    start = time.perf_counter()
    model.forward(ids, cache, last_only=True)
    return n_tokens / (time.perf_counter() - start)


def time_decode(model, context: int, n_tokens: int, rng, cache_type: str) -> float:
    """Decode tok/s for n_tokens single-token steps after `context` prompt tokens (>= 1)."""
    cache = model.new_cache(cache_type=cache_type)
    logits = model.forward(rng.integers(0, model.config.vocab_size, max(1, context)), cache, last_only=True)
    start = time.perf_counter()
    for _ in range(n_tokens):
        logits = model.forward([int(np.argmax(logits[-1]))], cache)
    return n_tokens / (time.perf_counter() - start)


FIRST_TOKEN_SCRIPT = """
import json, sys, time
start = time.perf_counter()
import numba, tinyexaone
numba.set_num_threads(int(sys.argv[2]))
model = tinyexaone.load(sys.argv[1], mmap=sys.argv[4] == "mmap")
cache = model.new_cache(cache_type=sys.argv[3])
model.forward(list(range(1, 9)), cache, last_only=True)
model.forward([9], cache)
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def time_first_token(path: Path, threads: int, numba_cache: str, cache_type: str, mmap: bool) -> float:
    """Seconds from interpreter start to the first decoded token of an 8-token prompt."""
    env = dict(os.environ, NUMBA_CACHE_DIR=numba_cache)
    done = subprocess.run([sys.executable, "-c", FIRST_TOKEN_SCRIPT, str(path), str(threads), cache_type,
                           "mmap" if mmap else "memory"], env=env,
                          capture_output=True, text=True, cwd=tempfile.gettempdir())
    if done.returncode:
        raise TinyExaoneError(f"first-token measurement failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def first_layers(model, n_layers: int, dense: bool):
    """A Model of the first n layers (dequantized to float32 if `dense`), without a head."""
    from dataclasses import replace

    from tinyexaone.model import Model
    from tinyexaone.weights import MATRIX_FIELDS, DenseWeight

    layers = model.weights.layers[:n_layers]
    if dense:
        layers = [replace(layer, **{name: DenseWeight(getattr(layer, name).dequantize()) for name in MATRIX_FIELDS})
                  for layer in layers]
    config = replace(model.config, num_hidden_layers=n_layers, layer_types=model.config.layer_types[:n_layers])
    return Model(config, replace(model.weights, layers=layers))


def time_layers(model, context: int, n_tokens: int, cache_type: str) -> float:
    """Seconds per decode token through the model's layers only (no head), after `context` tokens."""
    cache = model.new_cache(cache_type=cache_type)
    model._forward_hidden(np.arange(context), cache, 0)
    start = time.perf_counter()
    for i in range(n_tokens):  # the decode path: one token through the fused steps
        model._decode_hidden(np.array([i % model.config.vocab_size]), [cache], [cache.length])
    return (time.perf_counter() - start) / n_tokens


def time_torch_layers(config, context: int, n_tokens: int) -> float | None:
    """Seconds per decode token through COMPARE_LAYERS bf16 transformers layers; None without torch."""
    try:
        import torch
        from transformers import Exaone4Config, Exaone4ForCausalLM
    except ImportError:
        return None
    raw = {k: v for k, v in config.raw.items() if k not in ("architectures", "torch_dtype")}
    raw.update(num_hidden_layers=COMPARE_LAYERS, layer_types=list(config.layer_types[:COMPARE_LAYERS]),
               vocab_size=256)  # the layers are what is compared: a small vocabulary keeps init quick
    torch.manual_seed(0)
    model = Exaone4ForCausalLM(Exaone4Config(**raw)).to(torch.bfloat16).eval()
    layers = model.model
    with torch.no_grad():
        out = layers(torch.zeros((1, context), dtype=torch.long), use_cache=True)
        past = out.past_key_values
        start = time.perf_counter()
        for i in range(n_tokens):
            out = layers(torch.tensor([[i % 256]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
        return (time.perf_counter() - start) / n_tokens


def weights_place(model) -> str:
    """Where the weights are: in memory (and how much in huge pages) or in the file's memory map."""
    if model.weights.mapped_files:
        return "memory-mapped file"
    codes = getattr(model.weights.lm_head, "_codes", None)
    huge = None if codes is None else huge_page_bytes(codes)
    return "in memory" + ("" if huge is None else f", {huge / 1e6:.0f} MB in huge pages")


def run_bench(path: Path, threads: int, quick: bool, cache_type: str, mmap: bool = False) -> dict:
    import numba

    from tinyexaone.benchmarks import blas_rate, read_bandwidth
    from tinyexaone.amx import kernel_paths
    from tinyexaone.loading import open_model

    numba.set_num_threads(threads)
    rng = np.random.default_rng(0)
    prefill_sizes, decode_tokens, context = ((16, 64), 16, 64) if quick else ((64, 512), 128, 512)
    long_prompt, long_context = (128, 128) if quick else (2048, 4096)  # the long-prompt lines
    files = [path] if path.is_file() else list(path.glob("*.safetensors"))
    result = {"model": str(path), "threads": threads, "file_mb": sum(f.stat().st_size for f in files) / 1e6,
              **{f"kernel_{name}": value for name, value in kernel_paths().items()}}
    start = time.perf_counter()
    model, _ = open_model(path, mmap=mmap)  # the forward pass alone: no tokenizer
    result["load_s"] = time.perf_counter() - start
    result["rss_after_load_mb"] = peak_rss_mb()
    result["weights_place"] = weights_place(model)
    bytes_per_token = decode_bytes_per_token(model)
    result["decode_mb_per_token"] = bytes_per_token / 1e6
    with tempfile.TemporaryDirectory(prefix="tinyexaone-numba-") as numba_cache:
        result["first_token_cold_s"] = time_first_token(path, threads, numba_cache, cache_type, mmap)
        result["first_token_warm_s"] = time_first_token(path, threads, numba_cache, cache_type, mmap)
    for n in (3, 8, 16):  # compile or load the kernels in this process: 1- and 4-token tiles, AMX 16-token tiles
        time_prefill(model, n, rng, cache_type)
    time_decode(model, 1, 2, rng, cache_type)
    for n in prefill_sizes:
        result[f"prefill_{n}_tok_s"] = time_prefill(model, n, rng, cache_type)
    result["decode_tok_s"] = time_decode(model, 1, decode_tokens, rng, cache_type)
    result[f"decode_after_{context}_tok_s"] = time_decode(model, context, decode_tokens, rng, cache_type)
    result["peak_rss_mb"] = peak_rss_mb()  # before the long context's cache and the bandwidth probe's buffer
    result["kv_cache_type"] = model.new_cache(cache_type=cache_type).cache_type
    result[f"prefill_{long_prompt}_tok_s"] = time_prefill(model, long_prompt, rng, cache_type)
    result[f"decode_after_{long_context}_tok_s"] = time_decode(model, long_context, decode_tokens, rng, cache_type)
    result["bandwidth_gbs"] = read_bandwidth(threads)
    result["floor_tok_s"] = result["bandwidth_gbs"] * 1e9 / bytes_per_token
    result["decode_gbs"] = result["decode_tok_s"] * bytes_per_token / 1e9
    result["decode_pct_of_floor"] = 100 * result["decode_tok_s"] / result["floor_tok_s"]
    result["blas_gmacs"] = blas_rate()
    result["prefill_floor_tok_s"] = result["blas_gmacs"] * 1e9 / layer_macs_per_token(model)
    result["prefill_floor_tokens"] = max(prefill_sizes)  # attention's share is still small there
    result["prefill_pct_of_floor"] = (100 * result[f"prefill_{max(prefill_sizes)}_tok_s"]
                                      / result["prefill_floor_tok_s"])
    quantized = first_layers(model, COMPARE_LAYERS, dense=False)
    ours = time_layers(quantized, 32, 8 if quick else 32, cache_type)
    result["layers_compared"] = COMPARE_LAYERS
    dense = first_layers(model, COMPARE_LAYERS, dense=True)
    result["float32_numpy_ratio"] = time_layers(dense, 32, 8, cache_type) / ours
    torch_seconds = None if quick else time_torch_layers(model.config, 32, 16)
    result["pytorch_bf16_ratio"] = None if torch_seconds is None else torch_seconds / ours
    return result


ROWS = [
    ("file size", "file_mb", "{:.1f} MB"),
    ("read bandwidth (NumPy)", "bandwidth_gbs", "{:.1f} GB/s"),
    ("weights read per token", "decode_mb_per_token", "{:.1f} MB"),
    ("bandwidth floor", "floor_tok_s", "{:.1f} tok/s"),
    ("load", "load_s", "{:.2f} s"),
    ("weights", "weights_place", "{}"),
    ("RSS after load", "rss_after_load_mb", "{:.0f} MB"),
    ("first token, cold Numba cache", "first_token_cold_s", "{:.1f} s"),
    ("first token, warm Numba cache", "first_token_warm_s", "{:.2f} s"),
]


def print_table(result: dict) -> None:
    rows = list(ROWS)
    prefill_sizes = [int(k.split("_")[1]) for k in result if k.startswith("prefill_") and k.split("_")[1].isdigit()]
    rows += [(f"prefill {n} tokens", f"prefill_{n}_tok_s", "{:.1f} tok/s") for n in prefill_sizes]
    rows += [("decode, empty context", "decode_tok_s", "{:.1f} tok/s")]
    rows += [(f"decode after {k.split('_')[2]} tokens", k, "{:.1f} tok/s") for k in result if k.startswith("decode_after_")]
    rows += [
        ("BLAS float32 rate (all cores)", "blas_gmacs", "{:.1f} G multiply-adds/s"),
        ("prefill compute floor", "prefill_floor_tok_s", "{:.1f} tok/s"),
        (f"prefill {result['prefill_floor_tokens']} tokens, % of compute floor", "prefill_pct_of_floor", "{:.0f} %"),
        ("decode, achieved", "decode_gbs", "{:.1f} GB/s"),
        ("decode, % of floor", "decode_pct_of_floor", "{:.0f} %"),
        (f"peak RSS (context of {result['prefill_floor_tokens']})", "peak_rss_mb", "{:.0f} MB"),
        ("KV cache type", "kv_cache_type", "{}"),
        (f"decode vs float32 NumPy ({result['layers_compared']} layers)", "float32_numpy_ratio", "{:.1f}x faster"),
        (f"decode vs PyTorch bf16 ({result['layers_compared']} layers)", "pytorch_bf16_ratio", "{:.1f}x faster"),
    ]
    click.echo(f"tinyexaone bench: {result['model']} ({result['threads']} threads)")
    click.echo(f"  {'CPU / integer dot / prefill path':<40} {result['kernel_cpu']} / {result['kernel_integer_dot']} / {result['kernel_prefill']}")
    for label, key, fmt in rows:
        value = result.get(key)
        click.echo(f"  {label:<40} {'n/a (not installed)' if value is None else fmt.format(value)}")


@click.command()
@click.option("--model", "model_path", type=click.Path(path_type=Path),
              help="A compact model file or a Hugging Face model directory.")
@click.option("--synthetic", type=click.Choice(sorted(SYNTHETIC_SHAPES)), help="A random-weight model of this shape.")
@click.option("--bits", type=click.Choice(["4", "8"]), default="4", show_default=True, help="Synthetic model bits.")
@click.option("--group-size", type=click.Choice(["32", "64", "128"]), default="32", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Numba threads (default: all).")
@CACHE_TYPE_FLAG
@MMAP_FLAG
@click.option("--quick", is_flag=True, help="Fewer and shorter runs (for tests).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def bench(model_path, synthetic, bits, group_size, threads, cache_type, mmap, quick, as_json):
    """Measure load, first-token, prefill and decode speed against the bandwidth floor."""
    import numba

    from tinyexaone.cache import DEFAULT_CACHE_TYPE

    if (model_path is None) == (synthetic is None):
        raise click.UsageError("give exactly one of --model FILE or --synthetic SHAPE")
    threads = min(threads or numba.config.NUMBA_NUM_THREADS, numba.config.NUMBA_NUM_THREADS)
    if synthetic:
        model_path = synthetic_model(synthetic, int(bits), int(group_size))
    elif not model_path.exists():
        raise TinyExaoneError(f"{model_path}: no such file or directory")
    model_path = model_path.resolve()  # the first-token runs start in another directory
    result = run_bench(model_path, threads, quick, cache_type or DEFAULT_CACHE_TYPE, mmap)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        print_table(result)

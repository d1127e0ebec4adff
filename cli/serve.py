"""`tinyexaone serve`: the OpenAI-compatible server (tinyexaone/server.py) on one model.

It loads the model, prints the URL of the chat page and the API on stdout, and serves until
Ctrl-C (SIGINT) or SIGTERM: then it stops accepting, ends every generation (open streams get a
final error event), and exits 0. The API key comes from `--api-key` or `TINYEXAONE_API_KEY`.
`--parallel N` generations run at once, their decode steps batched; more wait in a fair queue.
`--ctx-size` bounds every request's context (default: the model's maximum), and
`--prompt-cache-mb` the keys and values kept between requests for prefix reuse.
"""

from __future__ import annotations

import signal
import threading

import click

from tinyexaone.engine import Engine
from tinyexaone.openai_api import REASONING_FORMATS
from tinyexaone.server import Server

from .model_resolution import load_model
from .options import CACHE_TYPE_FLAG, MMAP_FLAG, Number, apply_threads, context_size


@click.command()
@click.option("--model", "-m", metavar="M", default=None,
              help="Compact file, Hugging Face directory or repo id (default: the shipped demo model).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="Port to listen on (0 picks a free one).")
@click.option("--api-key", default=None, envvar="TINYEXAONE_API_KEY",
              help="Require 'Authorization: Bearer KEY' on /v1 requests (also TINYEXAONE_API_KEY).")
@click.option("--ctx-size", "-c", type=Number("context_size", zero_is_default=True), default=0, show_default=True,
              help="Context size in tokens per request; 0 = the model's maximum.")
@click.option("--threads", "-t", type=Number("threads"), default=None, help="Threads for the Numba kernels.")
@click.option("--parallel", "-np", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Generations at once (their decode steps run batched).")
@click.option("--cors", metavar="ORIGIN", default=None,
              help="Send Access-Control-Allow-Origin: ORIGIN (e.g. '*'); none by default.")
@click.option("--reasoning-format", type=click.Choice(REASONING_FORMATS), default="reasoning_content",
              show_default=True, help="Where reasoning goes: reasoning_content (llama-server), reasoning "
                                      "(mlx-lm, vLLM), or none (left in the content).")
@click.option("--prompt-cache-mb", type=click.IntRange(0, 1 << 20), default=1024, show_default=True,
              help="Memory for the KV caches kept between requests (prefix reuse).")
@CACHE_TYPE_FLAG
@MMAP_FLAG
def serve(model, host, port, api_key, ctx_size, threads, parallel, cors, reasoning_format, prompt_cache_mb,
          cache_type, mmap):
    """Serve the OpenAI chat-completions API and a chat page in the browser."""
    apply_threads(threads)
    loaded, resolved = load_model(model, mmap=mmap)
    engine = Engine(loaded, resolved.label, context_size(loaded, ctx_size), parallel=parallel,
                    cache_type=cache_type or "f16", prompt_cache_bytes=prompt_cache_mb << 20)
    try:
        server = Server(engine, host, port, api_key, cors, reasoning_format)
    except BaseException:
        engine.close()
        raise
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    serving = threading.Thread(target=server.serve_forever, name="tinyexaone-http", daemon=True)
    serving.start()
    click.echo(f"tinyexaone serving {resolved.label} at {server.url}/ (API: {server.url}/v1"
               f"{', key required' if api_key else ''}); Ctrl-C stops")
    while not stop.wait(0.5):
        if not serving.is_alive():
            break
    click.echo("stopping: ending generations", err=True)
    server.shutdown_cleanly()
    serving.join(timeout=10)

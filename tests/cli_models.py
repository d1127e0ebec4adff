"""Models for the CLI tests: the shipped demo model when it is present, else a tiny random one.

`shipped_model()` is models/exaone4-demo of the checkout when it holds a config.json (None
before it is trained). `build_tiny_chat_model(dir)` writes, without torch, a Hugging Face
directory with seeded random float32 weights (2 layers, hidden 32) and the real EXAONE 4.0
tokenizer files and chat template from tests/fixtures, so the CLI can load and run it in
milliseconds per token; its replies are random text. `cli(*args, cwd, input=None)` runs
`python -m tinyexaone` from outside the checkout, as CI runs the installed package.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from tinyexaone.chat_model import ChatModel
from tinyexaone.config import parse_config
from tinyexaone.tensors import model_tensors
from tinyexaone.tokenizer import TOKENIZER_FILES

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "exaone-4.0-1.2b"
TINY_SHAPE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, max_position_embeddings=2048)


def shipped_model() -> Path | None:
    path = ROOT / "models" / "exaone4-demo"
    return path if (path / "config.json").is_file() and (path / "tokenizer.json").is_file() else None


def build_tiny_chat_model(directory: Path, seed: int = 0) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = json.loads((FIXTURE / "config.json").read_text())
    config.update(TINY_SHAPE, layer_types=["full_attention"] * TINY_SHAPE["num_hidden_layers"], torch_dtype="float32")
    config["rope_scaling"]["original_max_position_embeddings"] = 256
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    for name in TOKENIZER_FILES:
        shutil.copyfile(FIXTURE / name, directory / name)
    rng = np.random.default_rng(seed)
    def matrix(rows, cols):
        return (0.3 * rng.standard_normal((rows, cols))).astype(np.float32)

    def norm(size):
        return (1.0 + 0.2 * rng.standard_normal(size)).astype(np.float32)

    specs = model_tensors(parse_config(config)).values()
    tensors = {spec.name: matrix(*spec.shape) if spec.is_matrix else norm(spec.shape[0]) for spec in specs}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


def cli_env(home: Path) -> dict:
    """The environment for a CLI subprocess: no colours forced, HOME (readline history) in a temp dir."""
    env = dict(os.environ)
    env.pop("NO_COLOR", None)
    env.update(HOME=str(home), XDG_STATE_HOME=str(home / "state"), PYTHONIOENCODING="utf-8", TERM="xterm")
    return env


def one_thread(args) -> list[str]:
    """`chat`/`generate` ARGS with `--threads 1` added: on a machine busy with other work, Numba's
    parallel launches can cost far more than the demo model's small matrices (tests stay fast;
    the flag itself is tested separately)."""
    args = [str(a) for a in args]
    return [args[0], "--threads", "1", *args[1:]] if args and args[0] in ("chat", "generate") else args


def reset_sigint() -> None:
    """For a child's preexec_fn: SIGINT back to its default, even when this test run was started
    with it ignored (under nohup, or as a background job of a non-interactive shell)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli(*args, cwd: Path, input: bytes | None = None, env: dict | None = None, timeout: float = 120):
    """Run `python -m tinyexaone ARGS` (one thread, see one_thread) with cwd outside the checkout;
    returns the CompletedProcess (bytes)."""
    return subprocess.run([sys.executable, "-m", "tinyexaone", *one_thread(args)], input=input, capture_output=True,
                          cwd=cwd, env=env or cli_env(Path(cwd)), timeout=timeout, preexec_fn=reset_sigint)


# --- a scripted stand-in model for in-process tests of the chat loop ----------------------------------


class ListCache:
    """The cache interface ChatSession uses, holding only token ids."""

    def __init__(self, max_tokens: int):
        self.ids: list[int] = []
        self.max_tokens = max_tokens

    @property
    def length(self) -> int:
        return len(self.ids)

    def can_trim(self, n: int) -> bool:
        return 0 <= n <= len(self.ids)

    def trim(self, n: int) -> None:
        del self.ids[n:]

    def reset(self) -> None:
        self.ids = []

    def check_room(self, new_tokens: int) -> None:
        assert self.length + new_tokens <= self.max_tokens


class ScriptedChatModel:
    """Stand-in for a pure Model (config, new_cache, forward) whose k-th assistant reply is `replies[k]` (then EOS), token by token.

    The reply being written is chosen by how many generation prompts ("[|assistant|]\\n" plus the
    think block) the ids hold, and the position in it by the tokens after the last one; the
    chosen next token gets logit 40, all others 0, so any sampling settings pick it.
    `on_forward(model, ids)` is called before each forward pass (e.g. to send a signal).
    """

    def __init__(self, tokenizer, replies: list[str], max_tokens: int = 4096, on_forward=None):
        self.tokenizer = tokenizer
        self.config = type("Config", (), {"vocab_size": tokenizer.vocab_size, "max_position_embeddings": max_tokens,
                                          "num_hidden_layers": 1})()
        self.scripts = [tokenizer.encode(r, add_special_tokens=False) + [tokenizer.eos_token_ids[0]] for r in replies]
        self.assistant = tokenizer.token_to_id("[|assistant|]")
        self.on_forward = on_forward
        self.forward_calls = 0
        # what the template writes after "[|assistant|]" with thinking off, and on
        self.generation_prompts = [tokenizer.encode(text, add_special_tokens=False)
                                   for text in ("\n<think>\n\n</think>\n\n", "\n<think>\n")]

    def new_cache(self, max_tokens=None, cache_type="f16") -> ListCache:
        return ListCache(max_tokens or self.config.max_position_embeddings)

    def _next(self, ids: list[int]) -> int:
        starts = [i for i, t in enumerate(ids) if t == self.assistant]
        if not starts:  # a prefill chunk before the generation prompt: its logits are never used
            return 0
        script = self.scripts[min(len(starts), len(self.scripts)) - 1]
        after = ids[starts[-1] + 1:]  # the generation prompt's think block, then the reply so far
        prompt = next(p for p in self.generation_prompts if after[: len(p)] == p)
        return script[min(len(after) - len(prompt), len(script) - 1)]

    def forward(self, token_ids, cache: ListCache, last_only=False):
        if self.on_forward is not None:
            self.on_forward(self, list(token_ids))
        self.forward_calls += 1
        cache.check_room(len(token_ids))
        cache.ids += [int(t) for t in token_ids]
        logits = np.zeros((len(token_ids), self.config.vocab_size), np.float32)  # [T, vocab]
        logits[-1, self._next(cache.ids)] = 40.0
        return logits[-1:] if last_only else logits

    def chat_session(self, **kwargs):
        return ChatModel(self, self.tokenizer).chat_session(**kwargs)

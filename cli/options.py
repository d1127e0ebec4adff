"""Flags shared by `chat` and `generate`, named as llama.cpp and mlx-lm users know them.

`generation_options` is a decorator adding --model, --system, --think/--no-think, the sampling
flags, --max-tokens, --ctx-size, --cache-type, --mmap, --threads and --reasoning-budget. Values are
checked by `Number` and `OneOf`, which raise TinyExaoneError (one line, exit code 2 via
cli.main) instead of click's multi-line usage error. `sampling_options(params)` turns the
parsed flags into keyword options of the generation API (flags left unset are omitted, so the
API's model-card defaults apply, which differ with thinking on and off). `apply_threads(n)`
maps --threads onto Numba. `CACHE_TYPE_FLAG` is --cache-type alone and `MMAP_FLAG` --mmap alone
(bench and serve take them too).
`structured_output_options` adds --json-schema FILE and --grammar FILE (Lark or GBNF), and
`structured_output(json_schema, grammar, chat)` reads them (at most MAX_GRAMMAR_BYTES, UTF-8, the
schema JSON) into the API's `response_format` (chat) or `grammar` (raw text) option.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from tinyexaone.errors import TinyExaoneError
from tinyexaone.options import OPTION_BOUNDS, check_option

# flag parameter name -> generation API option
API_NAMES = {
    "temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
    "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
    "repetition_penalty": "repetition_penalty", "seed": "seed", "max_tokens": "max_new_tokens",
    "reasoning_budget": "reasoning_budget", "cache_type": "cache_type",
}


class Number(click.ParamType):
    """A flag value checked against the API's bound for `option` (tinyexaone.options); a bad value
    is a one-line TinyExaoneError naming the flag. With `zero_is_default`, 0 is also accepted
    (the flag's "use the model's default")."""

    def __init__(self, option: str, zero_is_default: bool = False):
        self.option = option
        self.zero_is_default = zero_is_default
        self.kind = OPTION_BOUNDS[option].kind
        self.name = "integer" if self.kind is int else "number"

    def get_metavar(self, param, ctx=None) -> str:
        return "N" if self.kind is int else "X"

    def convert(self, value, param, ctx):
        number = value
        if isinstance(value, str):
            try:
                number = self.kind(value.strip())
            except ValueError:
                article = "an" if self.kind is int else "a"
                raise TinyExaoneError(f"invalid value for {param.opts[0]}: {value!r:.40} is not {article} "
                                      f"{self.name}") from None
        if self.zero_is_default and number == 0:
            return 0
        return check_option(self.option, number, label=param.opts[0], shown=repr(value)[:40])


class OneOf(click.ParamType):
    """A flag value that must be one of the API's choices for `option` (tinyexaone.options); a
    bad value is a one-line TinyExaoneError naming the flag."""

    name = "choice"

    def __init__(self, option: str):
        self.option = option

    def get_metavar(self, param, ctx=None) -> str:
        return "|".join(OPTION_BOUNDS[self.option].values)

    def convert(self, value, param, ctx):
        return check_option(self.option, value, label=param.opts[0], shown=repr(value)[:40])


MMAP_FLAG = click.option(
    "--mmap", is_flag=True,
    help="Keep a compact file's weights in its memory map instead of reading them into memory: loads at once "
         "and shares pages between processes, but decodes slower.")
CACHE_TYPE_FLAG = click.option(
    "--cache-type", type=OneOf("cache_type"), default=None,
    help="KV cache type: f16 (default), f32, or q8 (int8 with one scale per token and KV head).")


def generation_options(command):
    """Add the shared model, prompt-shaping and sampling flags to a click command."""
    flags = [
        click.option("--model", "-m", metavar="M", default=None,
                     help="Compact file, Hugging Face model directory, or repo id in the local Hugging Face cache "
                          "(default: the demo model shipped with tinyexaone)."),
        click.option("--system", metavar="TEXT", default=None, help="System prompt."),
        click.option("--think/--no-think", default=False, show_default=True,
                     help="Let the model reason before answering (EXAONE's thinking mode)."),
        click.option("--temperature", "--temp", type=Number("temperature"), default=None,
                     help="Sampling temperature; 0 = greedy (default 0.5, 0.6 with --think)."),
        click.option("--top-p", type=Number("top_p"), default=None,
                     help="Nucleus sampling mass (default 0.95)."),
        click.option("--top-k", type=Number("top_k"), default=None, help="Keep the k most likely tokens; 0 = off."),
        click.option("--min-p", type=Number("min_p"), default=None,
                     help="Drop tokens below min-p times the top probability; 0 = off."),
        click.option("--presence-penalty", type=Number("presence_penalty"), default=None,
                     help="Penalty for tokens already generated (OpenAI style)."),
        click.option("--frequency-penalty", type=Number("frequency_penalty"), default=None,
                     help="Penalty per repetition of a generated token (OpenAI style)."),
        click.option("--repetition-penalty", "--repeat-penalty", type=Number("repetition_penalty"), default=None,
                     help="Divide the logits of tokens already seen (1 = off)."),
        click.option("--seed", "-s", type=Number("seed"), default=None,
                     help="Random seed: the same seed and settings give the same output."),
        click.option("--max-tokens", "-n", type=Number("max_new_tokens"), default=None,
                     help="Most tokens per reply (default 1024)."),
        click.option("--ctx-size", "-c", type=Number("context_size", zero_is_default=True), default=0, show_default=True,
                     help="Context size in tokens; 0 = the model's maximum."),
        CACHE_TYPE_FLAG,
        MMAP_FLAG,
        click.option("--threads", "-t", type=Number("threads"), default=None,
                     help="Threads for the Numba kernels (at most what Numba started with)."),
        click.option("--reasoning-budget", type=Number("reasoning_budget"), default=None,
                     help="Close the reasoning after N tokens and make the model answer (with --think)."),
    ]
    for flag in reversed(flags):
        command = flag(command)
    return command


MAX_INPUT_BYTES = 64 << 20  # the most text one prompt, piped chat line or /load file may bring in
MAX_GRAMMAR_BYTES = 8 << 20  # the largest --json-schema or --grammar file


def structured_output_options(command):
    """Add --json-schema FILE and --grammar FILE to a click command."""
    command = click.option("--grammar", "grammar_file", type=click.Path(path_type=Path), default=None, metavar="FILE",
                           help="Constrain the reply to a grammar (Lark, or GBNF as llama.cpp writes it).")(command)
    return click.option("--json-schema", "json_schema_file", type=click.Path(path_type=Path), default=None,
                        metavar="FILE", help="Constrain the reply to JSON matching this JSON schema.")(command)


def _read_text(path: Path, flag: str) -> str:
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_GRAMMAR_BYTES + 1)
    except OSError as exc:
        raise TinyExaoneError(f"{flag} {path}: cannot read ({exc.strerror or exc})") from None
    if len(data) > MAX_GRAMMAR_BYTES:
        raise TinyExaoneError(f"{flag} {path}: larger than {MAX_GRAMMAR_BYTES >> 20} MB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise TinyExaoneError(f"{flag} {path}: not UTF-8 text") from None


def structured_output(json_schema_file: Path | None, grammar_file: Path | None, chat: bool) -> dict:
    """The API options for --json-schema / --grammar (none given: {})."""
    if json_schema_file is not None and grammar_file is not None:
        raise TinyExaoneError("give --json-schema or --grammar, not both")
    if grammar_file is not None:
        return {"grammar": _read_text(grammar_file, "--grammar")}
    if json_schema_file is None:
        return {}
    try:
        schema = json.loads(_read_text(json_schema_file, "--json-schema"))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise TinyExaoneError(f"--json-schema {json_schema_file}: not valid JSON ({exc})") from None
    if chat:
        return {"response_format": {"type": "json_schema", "json_schema": {"name": json_schema_file.stem,
                                                                           "schema": schema}}}
    return {"grammar": {"json_schema": schema}}


def valid_text(value: str | None, flag: str) -> str | None:
    """A command-line text with any bytes that were not UTF-8 (Python keeps them as lone
    surrogates) replaced by U+FFFD, with a warning on stderr."""
    if value is None:
        return None
    fixed = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if fixed != value:
        click.echo(f"warning: {flag} is not valid UTF-8; invalid bytes were replaced", err=True)
    return fixed


def sampling_options(params: dict) -> dict:
    """Generation API keyword options for the flags that were given."""
    return {API_NAMES[name]: params[name] for name in API_NAMES if params.get(name) is not None}


def context_size(model, requested: int) -> int | None:
    """--ctx-size as a cache limit (None = the model's maximum); larger than the model allows is an error."""
    limit = model.config.max_position_embeddings
    if requested > limit:
        raise TinyExaoneError(f"invalid value for --ctx-size: {requested} (this model handles at most {limit} tokens)")
    return requested or None


def apply_threads(threads: int | None) -> int | None:
    """Set Numba's thread count to `threads`, clamped to [1, NUMBA_NUM_THREADS]; returns the count
    used, or None when no --threads was given or Numba is not importable."""
    if threads is None:
        return None
    try:
        import numba
    except ImportError:
        return None
    used = max(1, min(threads, numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(used)
    return used

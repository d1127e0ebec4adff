"""`tinyexaone generate --prompt TEXT`: one reply, printed as it is generated, then exit 0.

By default the prompt is one user message (after `--system`, if given) rendered with the
model's chat template; `--think` lets the model reason first, and the reasoning goes to stderr
so stdout carries only the answer. `--raw` feeds the prompt as plain text to continue (no
template; `--system`, `--think` and `--reasoning-budget` do not apply). `--prompt -` reads the
prompt from stdin. The text goes to stdout (sanitised with `terminal.sanitize` when stdout is a
terminal, byte-faithful otherwise) and one stats line to stderr. `--json` instead prints one JSON
object: {"content", "reasoning_content", "tool_calls", "finish_reason", "stats"}.
`--json-schema FILE` makes the answer JSON matching that schema (the chat `response_format`;
with `--raw` the whole continuation), `--grammar FILE` makes it match a Lark or GBNF grammar;
a bad file or schema is an error (exit 2) before anything is generated. With
`--temperature 0` (greedy) the output is the same on every run. A prompt that does not fit the
context is an error (exit 2); a reply that fills the context says so on stderr.
"""

from __future__ import annotations

import json
import sys

import click

from tinyexaone.errors import ContextOverflowError, TinyExaoneError
from tinyexaone.signals import install_sigterm_exit

from .chat import format_stats
from .model_resolution import load_model
from .options import (MAX_INPUT_BYTES, apply_threads, context_size, generation_options, sampling_options,
                      structured_output, structured_output_options, valid_text)
from .terminal import sanitize


def _read_prompt(prompt: str | None) -> str:
    if prompt is None:
        raise TinyExaoneError("generate needs --prompt TEXT (or --prompt - to read it from stdin)")
    if prompt == "-":
        data = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)
        if len(data) > MAX_INPUT_BYTES:
            raise TinyExaoneError(f"the prompt on stdin is larger than {MAX_INPUT_BYTES >> 20} MB")
        prompt = data.decode("utf-8", errors="replace")
    if not prompt.strip():
        raise TinyExaoneError("the prompt is empty")
    return prompt


@click.command()
@generation_options
@structured_output_options
@click.option("--prompt", "-p", metavar="TEXT", default=None, help="The prompt ('-' reads it from stdin).")
@click.option("--raw", is_flag=True, help="Continue the prompt as plain text, without the chat template.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: content, reasoning_content, tool_calls, finish_reason, stats.")
def generate(model, system, think, ctx_size, mmap, threads, prompt, raw, as_json, json_schema_file, grammar_file,
             **flags):
    """Generate one reply to --prompt and print it."""
    install_sigterm_exit()
    prompt, system = _read_prompt(valid_text(prompt, "--prompt")), valid_text(system, "--system")
    if raw and (system is not None or think or flags.get("reasoning_budget") is not None):
        raise TinyExaoneError("--system, --think and --reasoning-budget need the chat template; drop --raw")
    structured = structured_output(json_schema_file, grammar_file, chat=not raw)
    apply_threads(threads)
    loaded, _ = load_model(model, chat_template=not raw, mmap=mmap)
    options = {**sampling_options(flags), **structured}
    options["context_size"] = context_size(loaded, ctx_size)
    show = sanitize if sys.stdout.isatty() else (lambda text: text)
    try:
        if raw:
            result = _raw(loaded, prompt, options, as_json, show)
        else:
            result = _chat(loaded, prompt, system, think, options, as_json, show)
    except ContextOverflowError as exc:
        raise TinyExaoneError(f"{exc}; use a larger --ctx-size (this model allows "
                              f"{loaded.config.max_position_embeddings}) or a shorter prompt") from None
    if as_json:
        click.echo(json.dumps(result, ensure_ascii=False))
        return
    if result["finish_reason"] == "length" and result["stats"].get("context_full"):
        click.echo("note: the reply stopped because the context is full; use a larger --ctx-size", err=True)
    click.echo(format_stats(result["stats"]), err=True)


def _raw(model, prompt, options, as_json, show) -> dict:
    chunks = model.stream(prompt, **options)
    for chunk in chunks:
        if not as_json:
            sys.stdout.write(show(chunk))
            sys.stdout.flush()
    if not as_json:
        sys.stdout.write("\n")
    result = chunks.result
    return {"content": result.text, "reasoning_content": None, "tool_calls": [],
            "finish_reason": result.finish_reason, "stats": result.stats}


def _chat(model, prompt, system, think, options, as_json, show) -> dict:
    messages = [] if system is None else [{"role": "system", "content": system}]
    messages.append({"role": "user", "content": prompt})
    done = None
    reasoning_shown = False
    for event in model.chat(messages, enable_thinking=think, stream=True, **options):
        kind = event["type"]
        if kind == "done":
            done = event
        elif as_json:
            continue
        elif kind == "content":
            if reasoning_shown:  # the reasoning (on stderr) ends with its own line
                click.echo("", err=True)
                reasoning_shown = False
            sys.stdout.write(show(event["delta"]))
            sys.stdout.flush()
        elif kind == "reasoning":
            click.echo(sanitize(event["delta"]), err=True, nl=False)
            reasoning_shown = True
        elif kind == "tool_call":
            function = event["tool_call"]["function"]
            click.echo(sanitize(f"\ntool call: {function['name']}({function['arguments']})"), err=True)
        elif kind == "tool_call_error":
            click.echo(sanitize(f"\nunusable tool call: {event['error']['error']}"), err=True)
    if not as_json:
        sys.stdout.write("\n")
    message = done["message"]
    return {"content": message["content"], "reasoning_content": message["reasoning_content"],
            "tool_calls": message["tool_calls"], "finish_reason": done["finish_reason"], "stats": done["stats"]}

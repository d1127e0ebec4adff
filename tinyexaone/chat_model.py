"""What `tinyexaone.load` returns: a pure `Model` with its tokenizer, and the generation API on top.

`ChatModel(model, tokenizer=None, tokenizer_loader=None)` pairs a `Model` (config, weights,
forward, new_cache; model.py) with its `Tokenizer`, given directly or built by
`tokenizer_loader()` on first use of `.tokenizer` (a forward-only user never pays the ~60 MB
the tokenizer costs). `config`, `forward` and `new_cache` are the model's own. On top:
`generate(prompt)` and `stream(prompt)` continue raw text (no template), `chat(messages)` answers
a conversation (a `ChatResponse`, or with `stream=True` a `ChatStream` of events), and
`chat_session()` keeps a KV cache across turns (chat.py). Every run gets its own cancel token
(generation.py): `TextStream.cancel()`, `ChatStream.cancel()` and `ChatSession.cancel()` stop
that run only, and `cancel()` here stops every run of this model that exists when it is called.
"""

from __future__ import annotations

import threading

from .cache import DEFAULT_CACHE_TYPE
from .chat import ChatSession, ChatStream, ChatTurn, collect
from .errors import TinyExaoneError
from .generation import GenerationResult, Run, RunRegistry, TextStream, make_options, prompt_ids
from .model import Model


class ChatModel:
    """A model and its tokenizer; see the module docstring."""

    def __init__(self, model: Model, tokenizer=None, tokenizer_loader=None):
        self.model = model
        self._tokenizer = tokenizer
        self._tokenizer_loader = None if tokenizer is not None else tokenizer_loader
        self._tokenizer_lock = threading.Lock()
        self.runs = RunRegistry()

    # --- the model ---------------------------------------------------------------------------------

    @property
    def config(self):
        return self.model.config

    def forward(self, token_ids, cache=None, last_only: bool = False):
        """Logits [T, vocab] for T new tokens after what `cache` holds; see Model.forward."""
        return self.model.forward(token_ids, cache, last_only=last_only)

    def new_cache(self, max_tokens: int | None = None, cache_type: str = DEFAULT_CACHE_TYPE):
        return self.model.new_cache(max_tokens, cache_type)

    @property
    def tokenizer(self):
        """The tokenizer, built on first use (None when the model has none)."""
        if self._tokenizer is None and self._tokenizer_loader is not None:
            with self._tokenizer_lock:
                if self._tokenizer is None:
                    self._tokenizer = self._tokenizer_loader()
                    self._tokenizer_loader = None
        return self._tokenizer

    def require_tokenizer(self):
        if self.tokenizer is None:
            raise TinyExaoneError("this model has no tokenizer (no tokenizer.json next to the weights); "
                                  "pair it with one: ChatModel(model, tinyexaone.load_tokenizer(path))")
        return self.tokenizer

    # --- generation ----------------------------------------------------------------------------------

    def stream(self, prompt, **options) -> TextStream:
        """Continue raw text (or token ids), yielding text chunks; `.result` at the end."""
        tokenizer = self.require_tokenizer()
        opts = make_options(False, **options)
        for name in ("reasoning_budget", "response_format", "tool_choice"):
            if getattr(opts, name) is not None:
                raise TinyExaoneError(f"{name} applies to chat(), not to raw-text generation")
        cache = self.model.new_cache(opts.context_size, opts.cache_type)
        if isinstance(prompt, str):
            tokenizer.check_fits(prompt, cache.max_tokens)
        run = Run(self.model, tokenizer, cache, [], prompt_ids(tokenizer, prompt), opts, self.runs.new_token(opts.cancel))
        return TextStream(run)

    def generate(self, prompt, **options) -> GenerationResult:
        """Continue raw text (no chat template); see generation.py for the options. `grammar=`
        (Lark text, or {"lark" | "gbnf" | "regex" | "json_schema": ...}; grammar.py) constrains
        the whole continuation, which then ends when the grammar is complete."""
        chunks = self.stream(prompt, **options)
        for _ in chunks:
            pass
        return chunks.result

    def chat(self, messages, tools=None, enable_thinking: bool = False, stream: bool = False,
             template_kwargs: dict | None = None, special_tokens_in_content: bool = False, **options):
        """One assistant reply to `messages` -> ChatResponse, or a ChatStream of events if `stream`.
        `response_format` ({"type": "json_schema", "json_schema": {"name", "schema"}} or
        {"type": "json_object"}) or `grammar` constrains the answer (after the reasoning), and
        `tool_choice` ("auto", "none", "required" or {"type": "function", "function": {"name"}})
        the tool calls; see chat.py. Special-token text inside system, user and tool messages is plain text unless
        `special_tokens_in_content` (transformers' behaviour; see prompt.py)."""
        opts = make_options(enable_thinking, **options)
        token = self.runs.new_token(opts.cancel)
        turn = ChatTurn(self.model, self.require_tokenizer(), messages, tools, enable_thinking, opts, template_kwargs,
                        self.model.new_cache(opts.context_size, opts.cache_type), [], token, special_tokens_in_content)
        return ChatStream(turn.events(), token) if stream else collect(turn.events())

    def chat_session(self, system: str | None = None, tools=None, enable_thinking: bool = False,
                     **options) -> ChatSession:
        """A multi-turn conversation that reuses its KV cache between turns."""
        return ChatSession(self, system=system, tools=tools, enable_thinking=enable_thinking, **options)

    def cancel(self) -> None:
        """Stop every generation of this model that exists now, before its next forward pass."""
        self.runs.cancel_all()

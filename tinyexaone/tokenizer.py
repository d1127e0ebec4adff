"""The tokenizer: BPE from tokenizer.json, special tokens from the files, streaming decode, chat template.

`tokenizer_from_files(texts, source)` builds it in memory from the texts of the model's files:
tokenizer.json (BPE, pre-tokenizer, added tokens -- run by the `tokenizers` library),
tokenizer_config.json / special_tokens_map.json (which added tokens are bos/eos/pad/unk),
generation_config.json (more end-of-sequence ids) and chat_template.jinja (or the
`chat_template` entry of tokenizer_config.json). No token id is hard-coded here: everything
is looked up in those files. `load_tokenizer(path)` takes those texts from a Hugging Face
directory (tokenizer files only are enough) or from the files embedded in a compact file.

`Tokenizer.encode(text)` / `decode(ids)` behave like transformers' `encode` / `decode` for the
same files. `Tokenizer.detokenizer()` returns a `StreamingDetokenizer` for byte-level BPE: it
turns ids into their raw bytes and emits only complete UTF-8 characters, so a Korean syllable
or an emoji split over several tokens is never cut, and the concatenation of everything it
emits (including `flush()`) equals `decode()` of the same ids. `apply_chat_template` renders
the model's own template (chat_template.py, through prompt.py) and can tokenize the result;
`encode_literal` tokenizes text with no special token matched.
"""

from __future__ import annotations

import codecs
import json
import operator
import re
import threading
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders

from .chat_template import compile_chat_template
from .compact import EMBEDDED_FILES as TOKENIZER_FILES
from .compact import open_compact
from .errors import ContextOverflowError, TinyExaoneError
from .prompt import chat_prompt

SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-to-character table, inverted: character -> byte.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes (controls, space, 0x7F-0xA0,
    0xAD) are mapped in order to U+0100, U+0101, ...
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    char_to_byte = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in printable:
            char_to_byte[chr(256 + shifted)] = b
            shifted += 1
    return char_to_byte


def _json_object(texts: dict[str, str], name: str, source: str) -> dict:
    """The JSON object in texts[name] ({} when that file is absent)."""
    if name not in texts:
        return {}
    try:
        data = json.loads(texts[name])
    except (json.JSONDecodeError, RecursionError) as e:
        raise TinyExaoneError(f"{source}: {name} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise TinyExaoneError(f"{source}: {name} is not a JSON object")
    return data


def _token_text(value) -> str | None:
    """A special-token entry is a string or a serialized AddedToken {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def token_id_list(ids) -> list[int]:
    """`ids` as a list of ints; anything that is not a sequence of integers (floats, bools, text)
    is one TinyExaoneError, never silently rounded."""
    try:
        if isinstance(ids, (str, bytes)) or any(isinstance(i, (bool, np.bool_)) for i in ids):
            raise TypeError
        return [operator.index(i) for i in ids]
    except TypeError:
        raise TinyExaoneError(f"token ids must be a sequence of integers, got {type(ids).__name__}") from None


class Tokenizer:
    """Byte-level BPE tokenizer with the model's special tokens and chat template."""

    def __init__(self, backend: BackendTokenizer, tokenizer_config: dict, special_tokens_map: dict,
                 generation_config: dict, chat_template: str | None, source: str = "tokenizer"):
        self.backend = backend
        self.source = source
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        if not isinstance(backend.decoder, decoders.ByteLevel):
            kind = type(backend.decoder).__name__ if backend.decoder is not None else "none"
            raise TinyExaoneError(f"{source}: unsupported tokenizer decoder {kind} (need ByteLevel)")
        added = backend.get_added_tokens_decoder()  # id -> AddedToken
        self.added_tokens = {tok.content: i for i, tok in added.items()}  # content -> id
        self.special_token_ids = frozenset(i for i, tok in added.items() if tok.special)
        self.special_texts = tuple(sorted({tok.content for tok in added.values() if tok.special and tok.content}))
        self._backend_lock = threading.Lock()  # encode_literal switches encode_special_tokens on
        for name in SPECIAL_TOKEN_NAMES:
            text = _token_text(tokenizer_config.get(name)) or _token_text(special_tokens_map.get(name))
            token_id = backend.token_to_id(text) if text is not None else None
            if text is not None and token_id is None:
                raise TinyExaoneError(f"{source}: {name} {text!r} is not in the vocabulary")
            setattr(self, name, text)
            setattr(self, name + "_id", token_id)
        self.eos_token_ids = self._end_of_sequence_ids(generation_config)
        self.chat_template_source = chat_template
        self._template = None
        self._char_to_byte = byte_level_alphabet()
        self._bytes_cache: dict[int, bytes] = {}
        self._max_token_bytes: int | None = None

    def _end_of_sequence_ids(self, generation_config: dict) -> tuple[int, ...]:
        configured = generation_config.get("eos_token_id")
        ids = configured if isinstance(configured, list) else [] if configured is None else [configured]
        if self.eos_token_id is not None:
            ids = [*ids, self.eos_token_id]
        for token_id in ids:
            if isinstance(token_id, bool) or not isinstance(token_id, int) or not 0 <= token_id < self.vocab_size:
                raise TinyExaoneError(f"{self.source}: eos_token_id {token_id!r} is not a valid token id")
        return tuple(dict.fromkeys(ids))

    # --- ids <-> text ---------------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; added tokens (role markers, <think>, ...) in the text become their ids."""
        if not isinstance(text, str):
            raise TinyExaoneError(f"encode expects a str, got {type(text).__name__}")
        try:
            with self._backend_lock:
                return self.backend.encode(text, add_special_tokens=add_special_tokens).ids
        except (TypeError, ValueError):  # the Rust side refuses text that is not valid Unicode
            lone = LONE_SURROGATE.search(text)
            where = f"a lone surrogate U+{ord(lone.group()):04X} at character {lone.start()}" if lone else "invalid"
            raise TinyExaoneError(f"the text is not valid Unicode ({where}); decode bytes with errors='replace'") from None

    def _check_ids(self, ids) -> list[int]:
        ids = token_id_list(ids)
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise TinyExaoneError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
        return ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.backend.decode(self._check_ids(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes one token stands for (as the ByteLevel decoder maps it)."""
        cached = self._bytes_cache.get(token_id)
        if cached is None:
            token = self.backend.id_to_token(token_id) if 0 <= token_id < self.vocab_size else None
            if token is None:
                raise TinyExaoneError(f"token id {token_id} is outside the vocabulary [0, {self.vocab_size})")
            table = self._char_to_byte
            if all(c in table for c in token):
                cached = bytes(table[c] for c in token)
            else:  # added tokens such as runs of spaces are stored as plain text
                cached = token.encode("utf-8")
            self._bytes_cache[token_id] = cached
        return cached

    @property
    def max_token_bytes(self) -> int:
        """The most bytes one token stands for: len(text in bytes) / this bounds the tokens of a text
        from below, so a text longer than context * this cannot fit, whatever its tokens."""
        if self._max_token_bytes is None:
            table = self._char_to_byte
            self._max_token_bytes = max(
                len(token) if all(c in table for c in token) else len(token.encode("utf-8"))
                for token in self.backend.get_vocab(with_added_tokens=True))
        return self._max_token_bytes

    def check_fits(self, text: str, max_tokens: int) -> None:
        """ContextOverflowError when `text` cannot fit `max_tokens` tokens, decided without tokenizing
        (the tokenizer needs ~200 bytes of memory per byte of text)."""
        limit = max_tokens * self.max_token_bytes
        if 4 * len(text) <= limit:  # a character is at most 4 bytes: fits without encoding the text
            return
        size = len(text.encode("utf-8", errors="surrogatepass"))
        if size > limit:
            raise ContextOverflowError(f"a text of {size:,} bytes cannot fit the context of {max_tokens:,} tokens "
                                       f"(a token is at most {self.max_token_bytes} bytes)", size,
                                       max_tokens * self.max_token_bytes)

    def detokenizer(self, skip_special_tokens: bool = False) -> StreamingDetokenizer:
        return StreamingDetokenizer(self, skip_special_tokens)

    # --- chat template ----------------------------------------------------------------------------------

    @property
    def special_tokens_map(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in SPECIAL_TOKEN_NAMES if getattr(self, name) is not None}

    @property
    def template(self):
        """The compiled chat template (compiled on first use)."""
        if self._template is None:
            if self.chat_template_source is None:
                raise TinyExaoneError(f"{self.source}: no chat template (chat_template.jinja or tokenizer_config.json)")
            self._template = compile_chat_template(self.chat_template_source)
        return self._template

    def encode_literal(self, text: str) -> list[int]:
        """Token ids of `text` with no added token matched: "[|system|]" is the characters it spells."""
        with self._backend_lock:
            self.backend.encode_special_tokens = True
            try:
                return self.backend.encode(text, add_special_tokens=False).ids
            finally:
                self.backend.encode_special_tokens = False

    def apply_chat_template(self, messages, tools=None, add_generation_prompt: bool = True,
                            tokenize: bool = False, max_tokens: int | None = None,
                            special_tokens_in_content: bool = True, **kwargs):
        """Render `messages` with the model's template -> str, or token ids when `tokenize`, as
        transformers does by default (special-token text in messages becomes those tokens).

        kwargs (e.g. `enable_thinking=True`, `skip_think=False`) become template variables;
        `max_tokens` and `special_tokens_in_content=False`: see `prompt.chat_prompt`.
        """
        text, ids = chat_prompt(self, messages, tools, add_generation_prompt, max_tokens, special_tokens_in_content,
                                tokenize=tokenize, **kwargs)
        return ids if tokenize else text


class StreamingDetokenizer:
    """Incremental byte-level decoding: `add(id)` returns the newly completed text; `flush()`
    returns what is still held (an unfinished UTF-8 sequence, shown as U+FFFD like decode())."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token_id: int) -> str:
        if self.skip_special_tokens and token_id in self.tokenizer.special_token_ids:
            return ""
        return self._utf8.decode(self.tokenizer.token_bytes(int(token_id)), final=False)

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


def read_tokenizer_files(directory: Path) -> dict[str, str]:
    """The texts of the tokenizer files present in a Hugging Face directory, by file name. Only
    regular files are read (a FIFO or device under such a name is refused, never opened)."""
    texts = {}
    for name in TOKENIZER_FILES:
        path = directory / name
        if not path.exists():
            continue
        if not path.is_file():
            raise TinyExaoneError(f"{path}: not a regular file")
        try:
            texts[name] = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TinyExaoneError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    return texts


def tokenizer_from_files(texts: dict[str, str], source: str) -> Tokenizer:
    """The tokenizer of a model from its files' texts (file name -> text, as `TOKENIZER_FILES`);
    built in memory, so it serves texts embedded in a compact file as well as a directory's."""
    if "tokenizer.json" not in texts:
        raise TinyExaoneError(f"{source}: no tokenizer.json")
    try:
        backend = BackendTokenizer.from_str(texts["tokenizer.json"])
    except Exception as e:  # the tokenizers library raises plain Exception subclasses from Rust
        raise TinyExaoneError(f"{source}: tokenizer.json is not a valid tokenizer file "
                              f"({' '.join(str(e).split())[:200]})") from None
    tokenizer_config = _json_object(texts, "tokenizer_config.json", source)
    chat_template = texts.get("chat_template.jinja")
    if chat_template is None:
        chat_template = tokenizer_config.get("chat_template")
        if isinstance(chat_template, list):  # [{"name": ..., "template": ...}, ...]
            named = {entry.get("name"): entry.get("template") for entry in chat_template if isinstance(entry, dict)}
            chat_template = named.get("default")
        if chat_template is not None and not isinstance(chat_template, str):
            raise TinyExaoneError(f"{source}: chat_template in tokenizer_config.json is not text")
    return Tokenizer(backend, tokenizer_config, _json_object(texts, "special_tokens_map.json", source),
                     _json_object(texts, "generation_config.json", source), chat_template, source=source)


def load_tokenizer(path) -> Tokenizer:
    """Load the tokenizer from a Hugging Face directory holding tokenizer.json (weights not needed)
    or from the files embedded in a compact model file."""
    path = Path(path)
    if path.is_file():
        return tokenizer_from_files(open_compact(path).files, f"{path} (embedded files)")
    if not path.is_dir():
        raise TinyExaoneError(f"{path}: not a directory with tokenizer files")
    return tokenizer_from_files(read_tokenizer_files(path), str(path))

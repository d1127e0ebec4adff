"""The Hugging Face tokenizer files of a GGUF model, rebuilt from its `tokenizer.*` metadata.

`tokenizer_files(gguf_file) -> {file name: text}` gives tokenizer.json, tokenizer_config.json,
generation_config.json and (when the file has `tokenizer.chat_template`) chat_template.jinja,
the texts `tokenizer.tokenizer_from_files` builds a tokenizer from and a compact file embeds.

What llama.cpp's converter wrote, read back (gguf-py's `SpecialVocab` and
`TextModel.get_vocab_base`): `tokenizer.ggml.model` "gpt2" is byte-level BPE; the tokens, in id
order, are the BPE vocabulary, except those of type CONTROL (special added tokens) and
USER_DEFINED (other added tokens, e.g. EXAONE's runs of spaces and `<think>`), which the converter
stored as their plain text and which become added tokens again (matched before pre-tokenizing,
not normalized; `special` for CONTROL); `tokenizer.ggml.merges` are "left right" pairs;
`tokenizer.ggml.pre` names the pre-tokenizer: "exaone4" (and "gpt-2") is llama.cpp's GPT-2
regex, which is exactly `tokenizers`' ByteLevel pre-tokenizer with its regex, as EXAONE 4's own
tokenizer.json has it. bos/eos/unk/pad come from the `*_token_id` keys, BOS/EOS are added to
encodings only when `add_bos_token`/`add_eos_token` say so, and an end-of-turn id (`eot`)
joins eos in generation_config.json. Anything that does not fit (another tokenizer model or
pre-tokenizer, a type-less token list, a merge naming an unknown token, duplicate tokens) is one
`TinyExaoneError` saying the tokenizer cannot be rebuilt.
"""

from __future__ import annotations

import json

import gguf

from .gguf_file import GgufFile
from .safetensors_file import fail

TOKENIZER = gguf.Keys.Tokenizer
TOKEN_TYPE = gguf.TokenType
BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
PRE_TOKENIZERS = {"exaone4": BYTE_LEVEL, "gpt-2": BYTE_LEVEL}  # tokenizer.ggml.pre -> tokenizer.json pre_tokenizer
SPECIAL_IDS = {"bos_token": TOKENIZER.BOS_ID, "eos_token": TOKENIZER.EOS_ID, "unk_token": TOKENIZER.UNK_ID,
               "pad_token": TOKENIZER.PAD_ID}


def _cannot(gguf_file: GgufFile, why: str):
    fail(gguf_file.path, f"the tokenizer in the GGUF metadata cannot be rebuilt: {why}")


def _special_ids(gguf_file: GgufFile, n_tokens: int) -> dict[str, int]:
    ids = {}
    for name, key in [*SPECIAL_IDS.items(), ("eot_token", TOKENIZER.EOT_ID)]:
        if gguf_file.has(key):
            token_id = gguf_file.integer(key)
            if not 0 <= token_id < n_tokens:
                _cannot(gguf_file, f"{key} {token_id} is outside the vocabulary of {n_tokens} tokens")
            ids[name] = token_id
    return ids


def _post_processor(add_bos: bool, add_eos: bool, tokens: list[str], ids: dict[str, int]) -> dict:
    """tokenizer.json's post_processor: ByteLevel (adds nothing), or a template adding BOS and/or EOS."""
    if not add_bos and not add_eos:
        return {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    wanted = [name for name, add in (("bos_token", add_bos), ("eos_token", add_eos)) if add]

    special = {name: {"SpecialToken": {"id": tokens[ids[name]], "type_id": 0}} for name in wanted}

    def sequence(sequence_id: str) -> list[dict]:  # [BOS] $A [EOS], each special only when asked for
        return [*([special["bos_token"]] if add_bos else []), {"Sequence": {"id": sequence_id, "type_id": 0}},
                *([special["eos_token"]] if add_eos else [])]

    used = {tokens[ids[name]]: {"id": tokens[ids[name]], "ids": [ids[name]], "tokens": [tokens[ids[name]]]}
            for name in wanted}
    return {"type": "TemplateProcessing", "single": sequence("A"), "pair": sequence("A") + sequence("B"),
            "special_tokens": used}


def tokenizer_files(gguf_file: GgufFile) -> dict[str, str]:
    """The tokenizer files' texts (module doc)."""
    model = gguf_file.string(TOKENIZER.MODEL) if gguf_file.has(TOKENIZER.MODEL) else None
    if model != "gpt2":
        _cannot(gguf_file, f"{TOKENIZER.MODEL} is {model!r}, only 'gpt2' (byte-level BPE) is supported")
    pre = gguf_file.string(TOKENIZER.PRE) if gguf_file.has(TOKENIZER.PRE) else None
    if pre not in PRE_TOKENIZERS:
        _cannot(gguf_file, f"{TOKENIZER.PRE} is {pre!r}; supported: {', '.join(PRE_TOKENIZERS)}")
    for key in (TOKENIZER.LIST, TOKENIZER.TOKEN_TYPE, TOKENIZER.MERGES):
        if not gguf_file.has(key):
            _cannot(gguf_file, f"no {key}")
    tokens = gguf_file.strings(TOKENIZER.LIST)
    types = gguf_file.integers(TOKENIZER.TOKEN_TYPE)
    if len(types) != len(tokens):
        _cannot(gguf_file, f"{len(tokens)} tokens but {len(types)} token types")
    unknown = sorted(set(types.tolist()) - {int(t) for t in (TOKEN_TYPE.NORMAL, TOKEN_TYPE.CONTROL,
                                                           TOKEN_TYPE.USER_DEFINED, TOKEN_TYPE.UNUSED)})
    if unknown:
        _cannot(gguf_file, f"token type {unknown[0]} has no meaning in a byte-level BPE vocabulary")
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        _cannot(gguf_file, "the token list holds the same token twice")
    merges = []
    for n, merge in enumerate(gguf_file.strings(TOKENIZER.MERGES)):
        pair = merge.split(" ")
        if len(pair) != 2 or any(part not in vocab for part in pair) or "".join(pair) not in vocab:
            _cannot(gguf_file, f"merge {n} {merge[:40]!r} is not two vocabulary tokens whose join is one")
        merges.append(pair)
    ids = _special_ids(gguf_file, len(tokens))
    add_bos = gguf_file.flag(TOKENIZER.ADD_BOS, False)
    add_eos = gguf_file.flag(TOKENIZER.ADD_EOS, False)
    for wanted, name in ((add_bos, "bos_token"), (add_eos, "eos_token")):
        if wanted and name not in ids:
            _cannot(gguf_file, f"it asks to add the {name} but names none")
    added = [{"id": i, "content": tokens[i], "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": int(kind) == TOKEN_TYPE.CONTROL}
             for i, kind in enumerate(types) if kind in (TOKEN_TYPE.CONTROL, TOKEN_TYPE.USER_DEFINED)]
    tokenizer_json = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": PRE_TOKENIZERS[pre], "post_processor": _post_processor(add_bos, add_eos, tokens, ids),
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }
    tokenizer_config = {name: tokens[ids[name]] for name in SPECIAL_IDS if name in ids}
    tokenizer_config.update(add_bos_token=add_bos, add_eos_token=add_eos)
    eos = [ids[name] for name in ("eos_token", "eot_token") if name in ids]
    generation_config = {key: value for key, value in (("bos_token_id", ids.get("bos_token")),
                                                       ("eos_token_id", list(dict.fromkeys(eos)) or None),
                                                       ("pad_token_id", ids.get("pad_token"))) if value is not None}
    texts = {name: json.dumps(data, ensure_ascii=False, separators=(",", ":")) for name, data in (
        ("tokenizer.json", tokenizer_json), ("tokenizer_config.json", tokenizer_config),
        ("generation_config.json", generation_config))}
    if gguf_file.has(TOKENIZER.CHAT_TEMPLATE):
        texts["chat_template.jinja"] = gguf_file.string(TOKENIZER.CHAT_TEMPLATE)
    return texts

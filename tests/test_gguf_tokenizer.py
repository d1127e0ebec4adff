"""The tokenizer rebuilt from GGUF metadata against the Hugging Face tokenizer it was converted from.

A GGUF holding the real EXAONE-4.0-1.2B tokenizer (tests/fixtures/exaone-4.0-1.2b, written the way
llama.cpp's converter stores it: tests/gguf_models.py) must give transformers' ids on a varied text
set (Korean, Spanish, code, emoji, runs of spaces, tabs and newlines, the special and added
tokens), decode them back the same way, and carry the chat template. Tokenizers that cannot be
rebuilt are one-line errors.
"""

import json

import gguf
import pytest

from gguf_models import write_gguf
from tinyexaone.errors import TinyExaoneError
from tinyexaone.gguf_file import open_gguf
from tinyexaone.gguf_tokenizer import tokenizer_files
from tinyexaone.tokenizer import tokenizer_from_files

from conftest import FIXTURE

TEXTS = [
    "안녕하세요, 만나서 반갑습니다. 오늘 날씨가 정말 좋네요!",
    "¿Dónde está la biblioteca? Mañana será otro día, señor Núñez.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\n\tprint(fib(10))  # 55",
    "emoji 🙂🚀👨‍👩‍👧‍👦 🇰🇷 ✅ and 😶\u200d🌫️",
    "runs:" + " " * 40 + "|" + " " * 31 + "|" + " " * 7 + "|\t\t\t|\n\n\n|   \n  \t ",
    "[|system|]You are helpful.[|endofturn|]\n[|user|]Hi [BOS] there[|endofturn|]\n[|assistant|]<think>\n\n</think>\n\nOK",
    "<tool_call>{\"name\": \"f\"}</tool_call><tool_result>1</tool_result> [PAD][UNK][EOS] [unused0] PI:URL",
    "Mixed 한국어 and English 123,456.78 3.14159 e^{iπ} = -1 ½ ∑ ÿ \x00 \x7f control",
    "I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL",
    "",
]


@pytest.fixture(scope="module")
def gguf_tokenizer(tmp_path_factory):
    config = json.loads((FIXTURE / "config.json").read_text())
    path = write_gguf(tmp_path_factory.mktemp("tok") / "tokenizer.gguf", config, {}, FIXTURE)
    files = tokenizer_files(open_gguf(path))
    return tokenizer_from_files(files, "gguf"), files


@pytest.mark.parametrize("text", TEXTS)
def test_same_ids_and_text_as_the_hf_tokenizer(text, gguf_tokenizer, reference, ours):
    tokenizer, _ = gguf_tokenizer
    ids = tokenizer.encode(text)
    assert ids == reference.encode(text, add_special_tokens=True) == ours.encode(text)
    assert tokenizer.decode(ids) == reference.decode(ids) == ours.decode(ids)


def test_special_tokens_and_chat_template(gguf_tokenizer, ours):
    tokenizer, files = gguf_tokenizer
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token) == \
        (ours.bos_token, ours.eos_token, ours.pad_token, ours.unk_token)
    assert tokenizer.eos_token_ids == ours.eos_token_ids
    assert files["chat_template.jinja"] == (FIXTURE / "chat_template.jinja").read_text()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "안녕? 🙂"}]
    assert tokenizer.apply_chat_template(messages, tokenize=True) == ours.apply_chat_template(messages, tokenize=True)
    assert tokenizer.vocab_size == ours.vocab_size
    for text in ("[|user|]", "<think>", " " * 31):
        assert tokenizer.token_to_id(text) == ours.token_to_id(text)


def write_tokenizer(path, **fields):
    """A metadata-only GGUF with a small byte-level vocabulary; `fields` override its tokenizer keys."""
    writer = gguf.GGUFWriter(str(path), "exaone4")
    values = {"model": "gpt2", "pre": "exaone4", "tokens": ["a", "b", "ab", "[BOS]"], "types": [1, 1, 1, 3],
              "merges": ["a b"], **fields}
    if values["model"] is not None:
        writer.add_tokenizer_model(values["model"])
    if values["pre"] is not None:
        writer.add_tokenizer_pre(values["pre"])
    writer.add_token_list(values["tokens"])
    writer.add_token_types(values["types"])
    writer.add_token_merges(values["merges"])
    writer.add_bos_token_id(values.get("bos", 3))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return open_gguf(path)


def test_a_small_vocabulary_rebuilds(tmp_path):
    tokenizer = tokenizer_from_files(tokenizer_files(write_tokenizer(tmp_path / "ok.gguf")), "small")
    assert tokenizer.encode("ab[BOS]ba") == [2, 3, 1, 0]


@pytest.mark.parametrize("fields, message", [
    ({"model": "llama"}, "only 'gpt2'"),
    ({"model": None}, "only 'gpt2'"),
    ({"pre": "qwen2"}, "supported: exaone4"),
    ({"types": [1, 1, 1]}, "4 tokens but 3 token types"),
    ({"types": [1, 1, 6, 3]}, "token type 6"),
    ({"merges": ["a c"]}, "merge 0 'a c'"),
    ({"merges": ["ab"]}, "merge 0 'ab'"),
    ({"tokens": ["a", "b", "ab", "a"]}, "same token twice"),
    ({"bos": 9}, "outside the vocabulary"),
])
def test_tokenizers_that_cannot_be_rebuilt(fields, message, tmp_path):
    with pytest.raises(TinyExaoneError, match="cannot be rebuilt.*" + message) as caught:
        tokenizer_files(write_tokenizer(tmp_path / "bad.gguf", **fields))
    assert "\n" not in str(caught.value)

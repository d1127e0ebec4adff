"""Tokenizer vs transformers on the real EXAONE 4.0 tokenizer files: ids, decode, streaming decode."""

import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from tinyexaone import TinyExaoneError, load_tokenizer

FIXTURE = Path(__file__).parent / "fixtures" / "exaone-4.0-1.2b"

GOLDEN_TEXTS = [
    "Hello, world! How are you doing today?",
    "Hello  world",
    "안녕하세요. 오늘 날씨가 정말 좋네요! 한국어 토크나이저 테스트입니다.",
    "¿Dónde está la biblioteca? Mañana será otro día, señor Muñoz.",
    "def add(a, b):\n    return a + b\n\nprint(add(1234, 5678))\n",
    "for (int i = 0; i < n; ++i) {\n\t\tsum += x[i];\n}",
    "Emoji: 😀👍🏽🇰🇷 👨‍👩‍👧‍👦 ✨ and a lone 🦙.",
    "spaces:  two   three                                   many (40)",
    "\t\ttabs\t\t\t\t\t\t\t\t\t\t\tmore tabs\t",
    "Windows line\r\nendings\r\n\r\nhere",
    "\n\n\nleading newlines and trailing   ",
    "[|system|]\nYou are helpful.[|endofturn|]\n[|user|]\n질문[|endofturn|]\n[|assistant|]\n<think>\n\n</think>\n\n",
    "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"서울\"}}</tool_call>",
    "<tool_result>{\"result\": 21}</tool_result>[|tool|][BOS][EOS][PAD]<|endoftext|>",
    "Digits 1234567890 and 3.14159 and -42e-7",
    "mixed 日本語 한국어 English Ελληνικά русский العربية",
    "",
    " ",
    "a",
]


@pytest.mark.parametrize("text", GOLDEN_TEXTS)
def test_encode_matches_transformers(ours, reference, text):
    assert ours.encode(text) == reference(text)["input_ids"]
    assert ours.encode(text, add_special_tokens=False) == reference.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("text", GOLDEN_TEXTS)
def test_decode_round_trips_like_transformers(ours, reference, text):
    ids = reference.encode(text, add_special_tokens=False)
    assert ours.decode(ids) == reference.decode(ids) == text
    assert ours.decode(ids, skip_special_tokens=True) == reference.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("text", GOLDEN_TEXTS)
def test_streaming_detokenizer_every_prefix(ours, reference, text):
    ids = reference.encode(text, add_special_tokens=False)
    for stop in range(len(ids) + 1):
        stream = ours.detokenizer()
        chunks = [stream.add(i) for i in ids[:stop]]
        streamed = "".join(chunks)
        # nothing emitted before the end of the prefix is ever revised: it is a prefix of the full text
        assert text.startswith(streamed)
        assert "\ufffd" not in streamed
        assert streamed + stream.flush() == reference.decode(ids[:stop])


def test_streaming_holds_back_split_characters(ours):
    ids = ours.encode("😀")
    assert len(ids) > 1  # the emoji is split over several byte tokens
    stream = ours.detokenizer()
    assert [stream.add(i) for i in ids] == [""] * (len(ids) - 1) + ["😀"]
    assert stream.flush() == ""


def test_streaming_invalid_bytes_match_decode(ours, reference):
    emoji = ours.encode(" 😀 안녕")
    odd_orders = [emoji[::-1], emoji[1:], emoji[:1] + emoji[2:], [emoji[1]] * 3, emoji[:1] + ours.encode("[|user|]x")]
    for ids in odd_orders:
        stream = ours.detokenizer()
        assert "".join(stream.add(i) for i in ids) + stream.flush() == reference.decode(ids)


def test_streaming_skip_special_tokens(ours, reference):
    ids = ours.encode("[|user|]\n안녕 <think>x</think>[|endofturn|]")
    stream = ours.detokenizer(skip_special_tokens=True)
    text = "".join(stream.add(i) for i in ids) + stream.flush()
    assert text == reference.decode(ids, skip_special_tokens=True)
    assert "<think>" in text and "[|user|]" not in text


def test_special_tokens_come_from_the_files(ours, reference):
    assert ours.eos_token == reference.eos_token == "[|endofturn|]"
    assert ours.eos_token_id == reference.eos_token_id
    assert ours.bos_token_id == reference.bos_token_id
    assert ours.pad_token_id == reference.pad_token_id
    generation = json.loads((FIXTURE / "generation_config.json").read_text())
    assert ours.eos_token_ids == tuple(dict.fromkeys([generation["eos_token_id"], reference.eos_token_id]))
    added = {tok.content: i for i, tok in reference.added_tokens_decoder.items()}
    for marker in ("<think>", "</think>", "<tool_call>", "</tool_call>", "[|user|]", "[|assistant|]"):
        assert ours.token_to_id(marker) == added[marker]
        assert ours.encode(marker) == [added[marker]]
    special = {i for i, tok in reference.added_tokens_decoder.items() if tok.special}
    assert ours.special_token_ids == special
    assert ours.vocab_size == len(reference)


def test_eos_list_in_generation_config(tmp_path):
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(FIXTURE / name, tmp_path / name)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [42, 361]}))
    tok = load_tokenizer(tmp_path)
    assert tok.eos_token_ids == (42, 361)
    assert tok.chat_template_source is None
    with pytest.raises(TinyExaoneError, match="no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])


def test_chat_template_from_tokenizer_config(tmp_path):
    shutil.copy(FIXTURE / "tokenizer.json", tmp_path / "tokenizer.json")
    config = json.loads((FIXTURE / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer(tmp_path)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "<user>hi"


def test_bad_inputs_raise_clear_errors(ours, tmp_path):
    with pytest.raises(TinyExaoneError, match="outside the vocabulary"):
        ours.decode([5, ours.vocab_size])
    with pytest.raises(TinyExaoneError, match="outside the vocabulary"):
        ours.detokenizer().add(-1)
    with pytest.raises(TinyExaoneError, match="expects a str"):
        ours.encode(b"bytes")
    with pytest.raises(TinyExaoneError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TinyExaoneError, match="not a valid tokenizer file"):
        load_tokenizer(tmp_path)
    with pytest.raises(TinyExaoneError, match="not a directory"):
        load_tokenizer(tmp_path / "missing")


def test_ids_come_from_the_files_not_from_exaone(tmp_path):
    """A different byte-level BPE with the same marker names at other ids: every id follows the files."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers, trainers

    markers = ["[PAD]", "[|endofturn|]", "[|user|]", "[|assistant|]", "[|system|]", "[|tool|]"]
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=markers,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(["hello world, 안녕하세요", "tiny tokenizer test"] * 20, trainer)
    backend.add_tokens(["<think>", "</think>", "<tool_call>", "</tool_call>"])
    backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "[|endofturn|]", "pad_token": "[PAD]"}))
    shutil.copy(FIXTURE / "chat_template.jinja", tmp_path / "chat_template.jinja")
    tok = load_tokenizer(tmp_path)
    assert tok.eos_token_ids == (1,) and tok.pad_token_id == 0 and tok.bos_token_id is None
    ids = tok.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=True)
    assert ids[0] == tok.token_to_id("[|user|]") == 2
    assert tok.token_to_id("<think>") in ids and tok.decode(ids).startswith("[|user|]\nhello[|endofturn|]")
    stream = tok.detokenizer()
    assert "".join(stream.add(i) for i in ids) + stream.flush() == tok.decode(ids)


@pytest.mark.parametrize("name", ["chat_template.jinja", "tokenizer_config.json", "tokenizer.json"])
def test_a_tokenizer_file_that_is_a_fifo_is_refused_not_opened(tmp_path, name):
    directory = tmp_path / "m"
    shutil.copytree(FIXTURE, directory)
    (directory / name).unlink()
    os.mkfifo(directory / name)  # opening it for reading would block for ever
    previous = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("reading a FIFO blocked"))
    signal.alarm(10)
    try:
        with pytest.raises(TinyExaoneError, match=f"{name}: not a regular file"):
            load_tokenizer(directory)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("name,content,message", [
    ("chat_template.jinja", b"{{ bos_token }}\xff\xfe", "chat_template.jinja: cannot read"),
    ("chat_template.jinja", None, "chat_template.jinja: not a regular file"),  # a directory
    ("tokenizer_config.json", b"[" * 100000 + b"]" * 100000, "tokenizer_config.json is not valid JSON"),
    ("generation_config.json", b'{"eos_token_id": ' + b"[" * 100000 + b"]" * 100000 + b"}",
     "generation_config.json is not valid JSON"),
    ("generation_config.json", b'{"eos_token_id": true}', "eos_token_id True is not a valid token id"),
])
def test_broken_tokenizer_files_are_one_line(tmp_path, name, content, message):
    directory = tmp_path / "m"
    shutil.copytree(FIXTURE, directory)
    (directory / name).unlink(missing_ok=True)
    if content is None:
        (directory / name).mkdir()
    else:
        (directory / name).write_bytes(content)
    with pytest.raises(TinyExaoneError, match=message) as info:
        load_tokenizer(directory)
    assert "\n" not in str(info.value)

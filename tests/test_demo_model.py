"""The trained demo model in models/exaone4-demo: files, tokenizer, template, measured quality.

Checks that the shipped directory is a real EXAONE 4 Hugging Face model (architecture, the
upstream chat template byte for byte, EXAONE's special-token strings and flags, the relevant
tokenizer_config fields, generation ids of its own tokenizer, under 20 MB); that the corpus is
rendered exactly as transformers renders the template; that the training loss mask covers the
replies only; and, on a held-out set from the generator (another seed), that the float32
runtime meets the floors measured for the README (arithmetic >= 80% with thinking off and on,
tool calls >= 95%, [|endofturn|] >= 99%). End to end through `ChatModel.chat`: thinking on gives
reasoning and a correct answer, and a tool round trip calls a real Python function. The int8
and int4 compact files keep perplexity within +1% / +5% and arithmetic within 2 / 5 points.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinyexaone

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "exaone4-demo"
UPSTREAM = ROOT / "tests" / "fixtures" / "exaone-4.0-1.2b"
EXAONE_TOKENS = ["[PAD]", "[BOS]", "[EOS]", "[UNK]", "[|system|]", "[|user|]", "[|assistant|]", "[|tool|]",
                 "[|endofturn|]", "<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_result>", "</tool_result>"]


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"exaone4_demo_{name}", DEMO / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


corpus = _module("corpus")
evaluate = _module("evaluate")


@pytest.fixture(scope="module", autouse=True)
def one_numba_thread():
    """Decode-sized kernels on this tiny model are dominated by thread hand-offs: 1 thread is
    several times faster on a busy 2-core machine (same results, the kernels split rows only)."""
    import numba

    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(previous)


@pytest.fixture(scope="module")
def model():
    return tinyexaone.load(DEMO)


@pytest.fixture(scope="module")
def float32_scores(model):
    return evaluate.evaluate(model, evaluate.QUICK_COUNTS)


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_directory_is_a_small_exaone4_model():
    names = {p.name for p in DEMO.iterdir()}
    for required in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                     "chat_template.jinja", "generation_config.json", "README.md"):
        assert required in names
    assert sum(p.stat().st_size for p in DEMO.iterdir() if p.is_file()) < 20 * 2**20
    config = _json(DEMO / "config.json")
    assert config["architectures"] == ["Exaone4ForCausalLM"] and config["model_type"] == "exaone4"
    assert config["tie_word_embeddings"] is True
    assert config["layer_types"] == ["full_attention"] * config["num_hidden_layers"]
    assert config["rope_parameters"]["rope_type"] == "llama3"
    assert config["num_attention_heads"] > config["num_key_value_heads"]  # GQA


def test_chat_template_is_the_upstream_file():
    assert (DEMO / "chat_template.jinja").read_bytes() == (UPSTREAM / "chat_template.jinja").read_bytes()


def test_tokenizer_has_exaone_tokens_with_upstream_flags():
    ours, upstream = _json(DEMO / "tokenizer.json"), _json(UPSTREAM / "tokenizer.json")
    upstream_flags = {t["content"]: t["special"] for t in upstream["added_tokens"]}
    our_tokens = {t["content"]: t for t in ours["added_tokens"]}
    for text in EXAONE_TOKENS:
        assert our_tokens[text]["special"] == upstream_flags[text], text
        assert our_tokens[text]["normalized"] is False
    for key in ("pre_tokenizer", "decoder", "post_processor", "normalizer"):
        assert ours[key] == upstream[key], key
    assert ours["model"]["type"] == "BPE"

    tokenizer = tinyexaone.load_tokenizer(DEMO)
    for text in EXAONE_TOKENS:
        assert tokenizer.encode(text, add_special_tokens=False) == [tokenizer.token_to_id(text)]
    ids = tokenizer.encode("12 + 345 = 357", add_special_tokens=False)
    assert [tokenizer.decode([i]).strip() for i in ids if tokenizer.decode([i]).strip().isdigit()] == list("12345357")
    assert tokenizer.encode("안녕하세요! ¿Cuánto es 7 × 8?", add_special_tokens=False)  # Korean/Spanish text encodes
    assert tokenizer.decode(tokenizer.encode("안녕하세요! ¿Cuánto?", add_special_tokens=False)) == "안녕하세요! ¿Cuánto?"


def test_tokenizer_config_and_generation_ids():
    ours, upstream = _json(DEMO / "tokenizer_config.json"), _json(UPSTREAM / "tokenizer_config.json")
    for key in ("add_bos_token", "bos_token", "eos_token", "pad_token", "unk_token", "tokenizer_class",
                "clean_up_tokenization_spaces", "add_prefix_space", "split_special_tokens"):
        assert ours[key] == upstream[key], key
    tokenizer = tinyexaone.load_tokenizer(DEMO)
    generation = _json(DEMO / "generation_config.json")
    assert generation["eos_token_id"] == tokenizer.token_to_id("[|endofturn|]")
    assert generation["bos_token_id"] == tokenizer.token_to_id("[BOS]")
    assert generation["pad_token_id"] == tokenizer.token_to_id("[PAD]")
    assert _json(DEMO / "config.json")["vocab_size"] == tokenizer.vocab_size


def test_corpus_renders_like_transformers():
    template_utils = pytest.importorskip("transformers.utils.chat_template_utils")
    template = (DEMO / "chat_template.jinja").read_text(encoding="utf-8")
    for item in evaluate.held_out({"arith": 3, "arith_think": 3, "tool": 4, "greet_think": 2, "multi": 2}, seed=5):
        ours = corpus.render_item(item)
        reference = template_utils.render_jinja_template(
            [item["messages"]], tools=item["tools"], chat_template=template,
            enable_thinking=item["thinking"], skip_think=not item["thinking"])[0][0]
        assert ours == reference
        prompt = corpus.render(item["messages"][:-1], item["tools"], thinking=item["thinking"], add_generation_prompt=True)
        assert ours.startswith(prompt)


def test_loss_mask_covers_exactly_the_replies():
    tokenizer = tinyexaone.load_tokenizer(DEMO)
    item = evaluate.held_out({"arith_think": 1}, seed=11)[0]
    text = corpus.render_item(item)
    encoding = tokenizer.backend.encode(text, add_special_tokens=False)
    mask = corpus.loss_mask(text, encoding.offsets)
    trained = tokenizer.decode([i for i, m in zip(encoding.ids, mask) if m])
    reply = item["messages"][-1]
    assert trained == f"{reply['reasoning_content']}\n</think>\n\n{reply['content']}[|endofturn|]"

    tool = evaluate.held_out({"tool": 1}, seed=11)[0]
    text = corpus.render_item(tool)
    encoding = tokenizer.backend.encode(text, add_special_tokens=False)
    trained = tokenizer.decode([i for i, m in zip(encoding.ids, corpus.loss_mask(text, encoding.offsets)) if m])
    assert trained.startswith("<tool_call>") and trained.endswith(f"{tool['messages'][-1]['content']}[|endofturn|]")
    assert "[|user|]" not in trained and "<tool_result>" not in trained


def test_float32_accuracy_floors(float32_scores):
    assert float32_scores["arith"] >= 0.80
    assert float32_scores["arith_think"] >= 0.80
    assert float32_scores["tool_call"] >= 0.95
    assert float32_scores["endofturn"] >= 0.99


def test_chat_with_thinking_gives_reasoning_and_the_answer(model):
    response = model.chat([{"role": "user", "content": "What is 27 + 45?"}], enable_thinking=True, temperature=0)
    message = response.message
    assert message["reasoning_content"] and "72" in message["reasoning_content"]
    assert evaluate.last_integer(message["content"]) == 72
    assert response.finish_reason == "stop"


def add(a: int, b: int) -> int:
    """The real Python function behind the `add` tool."""
    return a + b


def test_chat_tool_round_trip_with_a_python_function(model):
    tools = [corpus.tool_schema("add"), corpus.tool_schema("get_weather")]
    functions = {"add": add}
    messages = [{"role": "user", "content": "What is 318 + 527?"}]
    response = model.chat(messages, tools=tools, temperature=0)
    assert response.finish_reason == "tool_calls"
    (call,) = response.message["tool_calls"]
    result = functions[call["function"]["name"]](**json.loads(call["function"]["arguments"]))
    assert result == 845
    messages += [response.message, {"role": "tool", "content": str(result)}]
    final = model.chat(messages, tools=tools, temperature=0)
    assert "845" in final.message["content"] and not final.message["tool_calls"]


@pytest.mark.parametrize("bits, max_perplexity_rise, max_accuracy_drop", [(8, 0.01, 0.02), (4, 0.05, 0.05)])
def test_quantized_model_keeps_quality(tmp_path, float32_scores, bits, max_perplexity_rise, max_accuracy_drop):
    from tinyexaone.quant.convert import convert

    path = tmp_path / f"demo-int{bits}.tx"
    convert(DEMO, path, bits=bits, group_size=32, embedding_bits=8, show_progress=False)
    scores = evaluate.evaluate(tinyexaone.load(path), evaluate.QUICK_COUNTS)
    assert scores["perplexity"] <= float32_scores["perplexity"] * (1 + max_perplexity_rise)

    def arithmetic(s):
        n = s["counts"]
        return sum(s[k] * n[k] for k in ("arith", "arith_think", "multi")) / sum(n[k] for k in ("arith", "arith_think", "multi"))

    assert arithmetic(scores) >= arithmetic(float32_scores) - max_accuracy_drop
    assert scores["tool_call"] >= 0.95 and scores["endofturn"] >= 0.99


@pytest.mark.parametrize("name, min_mean_cosine", [("exaone4-demo-int8.tx", 0.999), ("exaone4-demo-int4.tx", 0.99)])
def test_shipped_compact_logits_follow_float32(model, name, min_mean_cosine):
    """On trained weights the quantized logits stay close to float32 over a whole conversation
    (measured: int8 0.99997, int4 g32 0.9995 mean cosine over 87 positions)."""
    import numpy as np

    messages = [{"role": "user", "content": "What is 47 + 38?"}, {"role": "assistant", "content": "47 + 38 = 85."},
                {"role": "user", "content": "¿Cuánto es 12 - 5?"}, {"role": "assistant", "content": "12 - 5 = 7."},
                {"role": "user", "content": "Hello! Who are you?"}]
    ids = model.tokenizer.encode(model.tokenizer.apply_chat_template(messages), add_special_tokens=False)
    ours, quantized = model.forward(ids), tinyexaone.load(DEMO / name).forward(ids)
    cosine = np.sum(ours * quantized, 1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(quantized, axis=1)
    assert cosine.mean() >= min_mean_cosine


def test_a_nan_scale_row_gives_one_error_line_not_a_crash(tmp_path):
    """Damaged data bytes load (the data checksum is only read by `info --verify`); the NaN they
    compute must end in one error line from generate and from a chat turn, never a traceback."""
    from tinyexaone.compact import open_compact
    from tinyexaone.quant.convert import convert

    out = tmp_path / "damaged.tx"
    convert(DEMO, out, bits=8, group_size=32, show_progress=False)
    entry = open_compact(out).entries["model.layers.0.mlp.down_proj.scales"]
    with open(out, "r+b") as f:
        f.seek(entry.start)
        f.write(np.full(entry.shape[1], np.nan, np.float16).tobytes())  # row 0 of the scales
    model = tinyexaone.load(out)
    with pytest.raises(tinyexaone.TinyExaoneError, match="no usable logits"):
        model.generate("Hello", max_new_tokens=4, temperature=0.7)
    session = model.chat_session(temperature=0.7, max_new_tokens=4)
    with pytest.raises(tinyexaone.TinyExaoneError, match="no usable logits"):
        session.send("hi")
    assert session.messages == [] and session.cached_ids  # the turn failed; the session goes on
    done = subprocess.run([sys.executable, "-m", "tinyexaone", "generate", "--model", str(out), "--prompt", "hi",
                           "--temperature", "0.7", "--threads", "1"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: the model computed no usable logits")


@pytest.mark.parametrize("form", ["directory", "compact file"])
def test_a_model_file_that_shrinks_after_load_is_one_error_not_sigbus(tmp_path, form):
    """In a child process: if the check failed, the mapped pages past the new end would kill it.
    The compact file is loaded with mmap=True (read into memory, it is not mapped at all: see
    tests/test_resident.py)."""
    import shutil

    if form == "directory":
        path = shutil.copytree(DEMO, tmp_path / "demo")
        shrinking = path / "model.safetensors"
    else:
        path = shrinking = tmp_path / "demo.tx"
        shutil.copyfile(DEMO / "exaone4-demo-int4.tx", path)
    script = f"""
import os, tinyexaone
model = tinyexaone.load({str(path)!r}, mmap=True)
model.forward([1, 2, 3])
os.truncate({str(shrinking)!r}, os.path.getsize({str(shrinking)!r}) // 2)
try:
    model.forward([1, 2, 3])
except tinyexaone.TinyExaoneError as exc:
    print("refused:", exc)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("refused: ") and "shrank" in done.stdout

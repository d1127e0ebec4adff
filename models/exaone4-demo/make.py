"""Regenerate the exaone4-demo model: corpus -> tokenizer -> transformers training -> HF directory.

Needs the test extras (torch==2.13.0, transformers==5.24.0; dev-only: the runtime never imports
them). The shipped model was made in two stages, from the repository root:

    nice -n 10 python models/exaone4-demo/make.py --out /tmp/demo-stage1
    nice -n 10 python models/exaone4-demo/make.py --init /tmp/demo-stage1 --out models/exaone4-demo \
        --corpus-seed 20260102 --corpus-size 56000 --arithmetic-mix --steps 3200 --lr 2e-3 --warmup 100

Each run prints what it does with timestamps:
  1. `corpus.conversations(size, seed)` rendered with the real EXAONE template;
  2. (stage 1) a byte-level BPE tokenizer trained with `tokenizers` on that text: EXAONE's
     special and added tokens first (same strings and flags as upstream: the think/tool tags are
     non-special), digits kept as single tokens, no merge across a newline (so a generation
     prompt ending in "\n\n" tokenizes like the training text; checked), and the upstream
     pre-tokenizer/decoder/post-processor; stage 2 reuses the stage-1 tokenizer;
  3. an `Exaone4ForCausalLM` (all global layers, llama3 RoPE, tied head, GQA) trained from a
     fixed seed (stage 2: from the stage-1 weights, on a fresh corpus with more arithmetic) with
     AdamW and a warmup + cosine schedule, on the assistant replies only (the template's
     generation prompt, `<think>\n\n</think>\n\n` or `<think>\n`, is masked like every
     non-assistant token);
  4. `save_pretrained` in bfloat16 plus tokenizer.json, tokenizer_config.json,
     special_tokens_map.json, generation_config.json and chat_template.jinja.
torch runs on 1 thread with deterministic algorithms, so a rerun on the same machine gives the
same weights; other CPUs may differ in the last bits.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import corpus  # noqa: E402

CORPUS_SEED = 20260101
CORPUS_SIZE = 36000
VOCAB_SIZE = 3072
SPECIAL_TOKENS = [  # (string, special) in id order; flags as in the upstream tokenizer.json
    ("[PAD]", True), ("[BOS]", True), ("[EOS]", True), ("[UNK]", True),
    ("</tool_call>", False), ("<tool_call>", False), ("</tool_result>", False), ("<tool_result>", False),
    ("</think>", False), ("<think>", False),
    ("[|system|]", True), ("[|tool|]", True), ("[|assistant|]", True), ("[|user|]", True), ("[|endofturn|]", True),
]
# stage 2 (see the module docstring) draws more arithmetic and fewer (long) tool conversations
ARITHMETIC_WEIGHTS = {"arith": 0.6, "arith_think": 0.2, "tool": 0.04, "greet": 0.04, "greet_think": 0.02, "multi": 0.1}
MODEL_SHAPE = dict(
    hidden_size=192, intermediate_size=576, num_hidden_layers=4, num_attention_heads=6, num_key_value_heads=2,
    head_dim=32, max_position_embeddings=4096,
)
ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 16.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 2048}
TRAIN = dict(seed=1234, steps=2400, batch_tokens=1024, lr=2.5e-3, warmup=80, min_lr_ratio=0.05, weight_decay=0.05,
             grad_clip=1.0)


def log(message: str, t0: float) -> None:
    print(f"[{time.time() - t0:7.1f}s] {message}", flush=True)


def train_tokenizer(texts: list[str]):
    """Byte-level BPE with EXAONE's added tokens at ids 0..14 and single-token digits."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    split = re.compile("|".join(re.escape(s) for s, _ in SPECIAL_TOKENS))
    pieces = [p for text in texts for p in split.split(text) if p]
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer = Tokenizer(models.BPE())
    # digits and newlines are split off before training so no merge ever joins a digit or a
    # newline; the saved tokenizer then uses the plain upstream ByteLevel pre-tokenizer and still
    # yields one token per digit, and "\n\n" at the end of a generation prompt becomes the same
    # two tokens as inside the training text
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", "isolated"), pre_tokenizers.Digits(individual_digits=True), byte_level])
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=[s for s, _ in SPECIAL_TOKENS], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(pieces, trainer=trainer)
    tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.add_special_tokens([AddedToken(s, normalized=False, special=True) for s, sp in SPECIAL_TOKENS if sp])
    tokenizer.add_tokens([AddedToken(s, normalized=False, special=False) for s, sp in SPECIAL_TOKENS if not sp])
    data = json.loads(tokenizer.to_str())
    flags = dict(SPECIAL_TOKENS)
    for entry in data["added_tokens"]:
        entry["special"] = flags[entry["content"]]
    tokenizer = Tokenizer.from_str(json.dumps(data, ensure_ascii=False))
    for i, (s, _) in enumerate(SPECIAL_TOKENS):
        assert tokenizer.token_to_id(s) == i, s
    for d in "0123456789":
        assert len(tokenizer.encode(f"x {d}{d}7{d}").ids) == 6
    return tokenizer


def check_prompt_prefixes(tokenizer, items: list[dict]) -> None:
    """Each reply's generation prompt must tokenize as a prefix of the training text."""
    for item in items:
        full = tokenizer.encode(corpus.render_item(item)).ids
        messages = item["messages"]
        for end in [i for i, m in enumerate(messages) if m["role"] == "assistant"]:
            thinking = item["thinking"] and end == len(messages) - 1
            prompt = tokenizer.encode(corpus.render(messages[:end], item["tools"], thinking, True)).ids
            if full[: len(prompt)] != prompt:
                raise SystemExit(f"generation prompt tokenizes differently from the training text: {messages[:end]}")


def tokenizer_config() -> dict:
    decoder = {
        str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": sp}
        for i, (s, sp) in enumerate(SPECIAL_TOKENS)
    }
    return {
        "add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": decoder,
        "additional_special_tokens": ["[|system|]", "[|tool|]", "[|assistant|]", "[|user|]", "[|endofturn|]"],
        "bos_token": "[BOS]", "clean_up_tokenization_spaces": False, "eos_token": "[|endofturn|]", "errors": "replace",
        "extra_special_tokens": {}, "model_max_length": MODEL_SHAPE["max_position_embeddings"], "pad_token": "[PAD]",
        "padding_side": "right", "split_special_tokens": False, "tokenizer_class": "GPT2Tokenizer", "unk_token": "[UNK]",
    }


def special_tokens_map() -> dict:
    return {
        "additional_special_tokens": ["[|system|]", "[|tool|]", "[|assistant|]", "[|user|]", "[|endofturn|]"],
        "bos_token": "[BOS]", "eos_token": "[|endofturn|]", "pad_token": "[PAD]", "unk_token": "[UNK]",
    }


def encode_for_training(tokenizer, texts: list[str]) -> list[tuple[list[int], list[bool]]]:
    out = []
    for enc, text in zip(tokenizer.encode_batch(texts), texts):
        out.append((enc.ids, corpus.loss_mask(text, enc.offsets)))
    return out


def batches(examples, batch_tokens: int, rng: random.Random):
    """Length-bucketed batches of about batch_tokens padded tokens, in random order."""
    order = sorted(range(len(examples)), key=lambda i: (len(examples[i][0]), rng.random()))
    groups, current, longest = [], [], 0
    for i in order:
        n = len(examples[i][0])
        if current and max(longest, n) * (len(current) + 1) > batch_tokens:
            groups.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, n)
    groups.append(current)
    rng.shuffle(groups)
    return groups


def build_model(vocab_size: int):
    import torch
    from transformers import Exaone4Config, Exaone4ForCausalLM

    layers = MODEL_SHAPE["num_hidden_layers"]
    config = Exaone4Config(
        vocab_size=vocab_size, hidden_act="silu", rms_norm_eps=1e-5, tie_word_embeddings=True,
        sliding_window=None, sliding_window_pattern=None, layer_types=["full_attention"] * layers,
        rope_parameters=dict(ROPE), bos_token_id=1, eos_token_id=14, pad_token_id=0, attention_dropout=0.0,
        initializer_range=0.02, **MODEL_SHAPE,
    )
    torch.manual_seed(TRAIN["seed"])
    return Exaone4ForCausalLM(config)


def save(model, tokenizer, out: Path, dtype) -> None:
    """The Hugging Face directory: weights in `dtype` (the training model is left as it is)."""
    import copy

    out.mkdir(parents=True, exist_ok=True)
    copy.deepcopy(model).to(dtype).save_pretrained(out)
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(), indent=2, ensure_ascii=False) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(special_tokens_map(), indent=2) + "\n")
    if out.resolve() != HERE:
        shutil.copyfile(corpus.TEMPLATE_PATH, out / "chat_template.jinja")


def train(model, examples, steps: int, t0: float, snapshot=None, snapshot_every: int = 0):
    import torch

    torch.manual_seed(TRAIN["seed"])
    rng = random.Random(TRAIN["seed"])
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": TRAIN["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=TRAIN["lr"], betas=(0.9, 0.95), eps=1e-8,
    )

    def lr_at(step: int) -> float:
        if step < TRAIN["warmup"]:
            return TRAIN["lr"] * (step + 1) / TRAIN["warmup"]
        progress = (step - TRAIN["warmup"]) / max(1, steps - TRAIN["warmup"])
        floor = TRAIN["min_lr_ratio"]
        return TRAIN["lr"] * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))

    model.train()
    queue: list = []
    epoch, seen_loss, seen_tokens = 0, 0.0, 0
    for step in range(steps):
        if not queue:
            queue = batches(examples, TRAIN["batch_tokens"], rng)
            epoch += 1
            log(f"epoch {epoch}: {len(queue)} batches", t0)
        group = queue.pop()
        width = max(len(examples[i][0]) for i in group)
        ids = torch.zeros((len(group), width), dtype=torch.long)  # [B, T], padded with [PAD]
        labels = torch.full((len(group), width), -100, dtype=torch.long)  # [B, T]
        attention = torch.zeros((len(group), width), dtype=torch.long)  # [B, T]
        for row, i in enumerate(group):
            tokens, mask = examples[i]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            attention[row, : len(tokens)] = 1
            labels[row, : len(tokens)] = torch.tensor([t if m else -100 for t, m in zip(tokens, mask)])
        # transformers shifts labels inside the loss: position t predicts labels[t + 1]
        for group_ in optimizer.param_groups:
            group_["lr"] = lr_at(step)
        out = model(input_ids=ids, attention_mask=attention, labels=labels)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), TRAIN["grad_clip"])
        optimizer.step()
        n = int((labels[:, 1:] != -100).sum())
        seen_loss += out.loss.item() * n
        seen_tokens += n
        if (step + 1) % 50 == 0 or step + 1 == steps:
            log(f"step {step + 1}/{steps} epoch {epoch} lr {lr_at(step):.2e} loss {seen_loss / seen_tokens:.4f}", t0)
            seen_loss, seen_tokens = 0.0, 0
        if snapshot is not None and snapshot_every and (step + 1) % snapshot_every == 0 and step + 1 < steps:
            snapshot(step + 1)
    model.eval()
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output directory (default: this directory)")
    parser.add_argument("--steps", type=int, default=TRAIN["steps"], help="optimizer steps")
    parser.add_argument("--corpus-size", type=int, default=CORPUS_SIZE)
    parser.add_argument("--corpus-seed", type=int, default=CORPUS_SEED)
    parser.add_argument("--lr", type=float, default=TRAIN["lr"], help="peak learning rate")
    parser.add_argument("--warmup", type=int, default=TRAIN["warmup"], help="warmup steps")
    parser.add_argument("--arithmetic-mix", action="store_true", help="draw kinds with ARITHMETIC_WEIGHTS")
    parser.add_argument("--init", type=Path, help="continue from this model directory (its weights and tokenizer)")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16", help="saved weight dtype")
    parser.add_argument("--snapshot-every", type=int, default=0, help="also save OUT/snapshot every N steps")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)  # one thread: on a shared 2-core machine, 2 threads stall on each other
    torch.use_deterministic_algorithms(True)
    t0 = time.time()
    TRAIN.update(lr=args.lr, warmup=args.warmup)
    kind_weights = ARITHMETIC_WEIGHTS if args.arithmetic_mix else corpus.KIND_WEIGHTS
    items = corpus.conversations(args.corpus_size, args.corpus_seed, kind_weights)
    texts = [corpus.render_item(item) for item in items]
    log(f"corpus: {len(texts)} conversations, {sum(map(len, texts))} characters", t0)

    if args.init is None:
        tokenizer = train_tokenizer(texts)
    else:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(args.init / "tokenizer.json"))
    check_prompt_prefixes(tokenizer, items[:500])
    examples = encode_for_training(tokenizer, texts)
    total = sum(len(ids) for ids, _ in examples)
    trained = sum(sum(mask) for _, mask in examples)
    log(f"tokenizer: {tokenizer.get_vocab_size()} entries; corpus {total} tokens, {trained} in replies "
        f"(longest conversation {max(len(ids) for ids, _ in examples)})", t0)

    if args.init is None:
        model = build_model(tokenizer.get_vocab_size())
    else:
        from transformers import Exaone4ForCausalLM

        model = Exaone4ForCausalLM.from_pretrained(args.init, dtype=torch.float32)
        log(f"continuing from {args.init}", t0)
    params = sum(p.numel() for p in model.parameters())
    log(f"model: {params} parameters, {MODEL_SHAPE}", t0)
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    out = args.out

    def snapshot(step: int) -> None:
        save(model, tokenizer, out / "snapshot", dtype)
        log(f"snapshot after step {step} in {out / 'snapshot'}", t0)

    model = train(model, examples, args.steps, t0, snapshot, args.snapshot_every)
    save(model, tokenizer, out, dtype)
    log(f"saved {args.dtype} model to {out}", t0)


if __name__ == "__main__":
    main()

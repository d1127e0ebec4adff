"""Tiny random-weight EXAONE 4 models built with transformers, the reference for our tests.

`build_reference_model(directory, seed=..., **config)` instantiates `Exaone4ForCausalLM` from
transformers with a fixed seed, perturbs the norm weights (so a norm that is skipped or applied
in the wrong place changes the logits), saves it with `save_pretrained` (float32 safetensors,
or bf16 when asked), and returns the torch model in float64 eager mode for reference outputs.
The named layouts below cover the cases the acceptance tests ask for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    # small enough that the 8 frequencies of head_dim 16 fall in all three llama3 bands
    "original_max_position_embeddings": 64,
}

# name -> config overrides; every layout is tiny (a few hundred KB) and runs in milliseconds.
LAYOUTS = {
    # (a) 1.2B-like: all global, tied head, llama3 RoPE with all three bands, GQA 4
    "global_tied_llama3": dict(
        vocab_size=211, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=8,
        num_key_value_heads=2, head_dim=16, tie_word_embeddings=True, sliding_window=None,
        sliding_window_pattern=None, layer_types=["full_attention"] * 3, rope_parameters=LLAMA3_ROPE,
        max_position_embeddings=512,
    ),
    # (b) 32B-like hybrid "LLLG": window 6, untied head, NoPE on global layers, GQA 2
    "hybrid_lllg_untied": dict(
        vocab_size=173, hidden_size=48, intermediate_size=80, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=12, tie_word_embeddings=False, sliding_window=6,
        sliding_window_pattern="LLLG",
        layer_types=["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
        rope_parameters=LLAMA3_ROPE, max_position_embeddings=256,
    ),
    # (c) integer pattern and no layer_types in config.json; GQA 1 (plain MHA), odd hidden size
    "int_pattern_no_layer_types": dict(
        vocab_size=157, hidden_size=60, intermediate_size=72, num_hidden_layers=3, num_attention_heads=5,
        num_key_value_heads=5, head_dim=12, tie_word_embeddings=True, sliding_window=5, sliding_window_pattern=3,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, max_position_embeddings=256,
        drop_layer_types=True,
    ),
    # (d) GQA 4 with an odd hidden size (not a power of two), default RoPE, untied
    "gqa4_odd_hidden": dict(
        vocab_size=199, hidden_size=72, intermediate_size=100, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=2, head_dim=10, tie_word_embeddings=False, sliding_window=None,
        sliding_window_pattern=None, layer_types=["full_attention"] * 2,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        max_position_embeddings=256,
    ),
}


def build_reference_model(directory: Path, seed: int = 0, dtype: str = "float32", **overrides):
    """Save a seeded tiny Exaone4ForCausalLM to `directory`; return it as float64 eager torch model."""
    import json

    import torch
    from transformers import Exaone4Config, Exaone4ForCausalLM

    overrides = dict(overrides)
    drop_layer_types = overrides.pop("drop_layer_types", False)
    config = Exaone4Config(bos_token_id=1, eos_token_id=2, pad_token_id=0, **overrides)
    torch.manual_seed(seed)
    model = Exaone4ForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                param.copy_(1.0 + 0.3 * torch.randn_like(param))
            elif param.dim() == 2:
                param.copy_(0.08 * torch.randn_like(param))
    model.config.attn_implementation = "eager"
    save_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    model.to(save_dtype).save_pretrained(directory, safe_serialization=True)
    if drop_layer_types:
        path = Path(directory) / "config.json"
        cfg = json.loads(path.read_text())
        cfg.pop("layer_types", None)
        path.write_text(json.dumps(cfg, indent=2))
    model = Exaone4ForCausalLM.from_pretrained(directory, torch_dtype=torch.float64, attn_implementation="eager")
    return model.eval()


def reference_logits(model, token_ids) -> np.ndarray:
    """Full-sequence logits [T, vocab] (float64) from the transformers model."""
    import torch

    with torch.no_grad():
        out = model(torch.tensor([list(token_ids)]), use_cache=False)
    return out.logits[0].numpy()


def reference_greedy(model, prompt_ids, new_tokens: int) -> list[int]:
    """transformers' greedy `generate` continuation (EOS disabled so it runs the full length)."""
    import torch

    with torch.no_grad():
        out = model.generate(
            torch.tensor([list(prompt_ids)]), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            do_sample=False, eos_token_id=None, pad_token_id=0,
        )
    return out[0, len(prompt_ids):].tolist()

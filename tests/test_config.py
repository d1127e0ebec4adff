"""Config parsing: the real 1.2B config, layer-type resolution order, RoPE keys, and errors."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from tinyexaone.config import FULL, SLIDING, load_config, parse_config
from tinyexaone.errors import TinyExaoneError
from tinyexaone.rope import inverse_frequencies

REAL_DIR = Path(__file__).parent / "fixtures" / "exaone-4.0-1.2b"
REAL_CONFIG = json.loads((REAL_DIR / "config.json").read_text())


def minimal(**changes):
    cfg = {
        "model_type": "exaone4", "vocab_size": 100, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 128, "rope_theta": 10000.0,
    }
    cfg.update(changes)
    return {k: v for k, v in cfg.items() if v is not ...}


def test_real_1_2b_config():
    cfg = load_config(REAL_DIR)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (2048, 30, 32, 8)
    assert cfg.head_dim == 64 and cfg.intermediate_size == 4096 and cfg.vocab_size == 102400
    assert cfg.tie_word_embeddings and cfg.sliding_window is None and not cfg.is_hybrid
    assert cfg.layer_types == (FULL,) * 30
    assert all(cfg.layer_uses_rope(i) for i in range(30))
    assert cfg.rope.rope_type == "llama3" and cfg.rope.factor == 16.0
    assert cfg.rope.original_max_position_embeddings == 8192 and cfg.rope.theta == 1e6
    assert cfg.eos_token_ids == (361,) and cfg.bos_token_id == 1 and cfg.rms_norm_eps == 1e-5


def test_real_1_2b_llama3_frequencies_match_transformers():
    import torch
    from transformers import Exaone4Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    ref_config = Exaone4Config(**{k: v for k, v in REAL_CONFIG.items() if k not in ("architectures", "torch_dtype")})
    expected, scaling = ROPE_INIT_FUNCTIONS["llama3"](ref_config, torch.device("cpu"))
    ours = inverse_frequencies(parse_config(REAL_CONFIG).rope, 64)
    assert scaling == 1.0
    np.testing.assert_allclose(ours, expected.numpy(), rtol=1e-6)
    base = inverse_frequencies(parse_config(minimal(rope_theta=1e6)).rope, 64)
    ratio = ours / base
    # three bands (transformers' llama3 RoPE): kept, interpolated, divided by 16
    np.testing.assert_allclose(ratio[:14], 1.0, rtol=1e-6)
    assert np.all((ratio[14:17] > 1 / 16) & (ratio[14:17] < 1))
    np.testing.assert_allclose(ratio[17:], 1 / 16, rtol=1e-6)


def test_rope_parameters_key_equals_rope_scaling_key():
    old = copy.deepcopy(REAL_CONFIG)
    new = copy.deepcopy(REAL_CONFIG)
    scaling = new.pop("rope_scaling")
    new["rope_parameters"] = dict(scaling, rope_theta=new.pop("rope_theta"))
    assert parse_config(old).rope == parse_config(new).rope


def test_head_dim_defaults_to_hidden_over_heads():
    assert parse_config(minimal()).head_dim == 8
    assert parse_config(minimal(head_dim=16)).head_dim == 16


@pytest.mark.parametrize(
    "changes, expected",
    [
        # 1. explicit layer_types win over everything
        (dict(sliding_window=4, sliding_window_pattern="LLLG", layer_types=[FULL, SLIDING, FULL, SLIDING]),
         (FULL, SLIDING, FULL, SLIDING)),
        # 2. null window: all full, whatever the pattern says
        (dict(sliding_window=None, sliding_window_pattern="LLLG"), (FULL,) * 4),
        # 3. string pattern, repeating
        (dict(sliding_window=4, sliding_window_pattern="LG"), (SLIDING, FULL, SLIDING, FULL)),
        (dict(sliding_window=4, sliding_window_pattern="LLLG"), (SLIDING, SLIDING, SLIDING, FULL)),
        # 4. integer pattern: layer i is full iff (i + 1) % n == 0
        (dict(sliding_window=4, sliding_window_pattern=2), (SLIDING, FULL, SLIDING, FULL)),
        (dict(sliding_window=4, sliding_window_pattern=3), (SLIDING, SLIDING, FULL, SLIDING)),
        # 5. window but no pattern: all full
        (dict(sliding_window=4), (FULL,) * 4),
    ],
)
def test_layer_type_resolution_order(changes, expected):
    assert parse_config(minimal(**changes)).layer_types == expected


def test_rope_rule_for_hybrid_models():
    cfg = parse_config(minimal(sliding_window=4, sliding_window_pattern="LLLG"))
    assert [cfg.layer_uses_rope(i) for i in range(4)] == [True, True, True, False]
    # a window with no sliding layer still means NoPE on full layers (transformers' rule)
    cfg = parse_config(minimal(sliding_window=4, layer_types=[FULL] * 4))
    assert not any(cfg.layer_uses_rope(i) for i in range(4))


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(model_type="llama"), "model_type is 'llama'"),
        (dict(num_key_value_heads=3), "not a multiple of num_key_value_heads"),
        (dict(hidden_size=30), "not divisible by num_attention_heads"),
        (dict(layer_types=[FULL] * 3), "must list 4 entries"),
        (dict(layer_types=[FULL, FULL, FULL, "chunked"]), "unknown layer type"),
        (dict(layer_types=[SLIDING] * 4), "'sliding_window' is null"),
        (dict(sliding_window=4, sliding_window_pattern="LXG"), "only 'L' and 'G'"),
        (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "unsupported rope_type 'yarn'"),
        (dict(rope_scaling={"rope_type": "llama3", "factor": 4.0}), "missing 'low_freq_factor'"),
        (dict(vocab_size="100"), "'vocab_size' must be an integer"),
        (dict(hidden_size=...), "'hidden_size' must be an integer"),
        (dict(head_dim=7, hidden_size=28), "head_dim must be even"),
        (dict(rms_norm_eps=-1), "'rms_norm_eps' must be a positive number"),
        (dict(hidden_act="gelu"), "unsupported hidden_act"),
        (dict(num_hidden_layers=10**7), "'num_hidden_layers' is 10000000, more than tinyexaone accepts"),
        (dict(vocab_size=2**40), "'vocab_size' is 1099511627776, more than tinyexaone accepts"),
        (dict(max_position_embeddings=2**40), "more than tinyexaone accepts"),
        (dict(sliding_window=2**40, sliding_window_pattern="LLLG"), "more than tinyexaone accepts"),
        (dict(tie_word_embeddings="false"), "'tie_word_embeddings' must be true or false"),
        (dict(eos_token_id=True), "'eos_token_id' must be a token id"),
        (dict(rope_theta=1e-300), "'rope_theta' must be > 1"),
        (dict(rms_norm_eps=1e300), "'rms_norm_eps' must be at most 1"),
    ],
)
def test_contradictory_or_foreign_configs_are_clear_errors(changes, message):
    with pytest.raises(TinyExaoneError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_config(minimal(**changes))


def test_missing_and_invalid_config_files(tmp_path):
    with pytest.raises(TinyExaoneError, match="no config.json"):
        load_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(TinyExaoneError, match="not valid JSON"):
        load_config(tmp_path)


def test_a_tiny_config_cannot_make_a_huge_allocation(tmp_path):
    """A 1 KB config.json with 10**7 layers (and no layer_types) is refused before any per-layer list."""
    (tmp_path / "config.json").write_text(json.dumps(minimal(num_hidden_layers=10**7)))
    with pytest.raises(TinyExaoneError, match="more than tinyexaone accepts"):
        load_config(tmp_path)


def test_deeply_nested_config_json_is_one_error(tmp_path):
    (tmp_path / "config.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(TinyExaoneError, match="not valid JSON"):
        load_config(tmp_path)

"""EXAONE 4 model configuration, parsed from a Hugging Face `config.json`.

`parse_config(dict)` / `load_config(path)` return an `Exaone4Config` whose every field is
resolved: head_dim defaults to hidden/heads, the RoPE settings come from `rope_scaling` or the
newer `rope_parameters` key, and each layer's kind (sliding or full attention) and whether it
applies RoPE are decided by the rules of transformers:
explicit `layer_types` first; a null `sliding_window` makes every layer full; then a string
pattern such as "LLLG"; then an integer pattern n (layer i is full iff (i+1) mod n == 0); else
all full. RoPE is applied when the model has no sliding window at all, or on sliding layers;
full layers of a hybrid model use no positional encoding. A config of another `model_type`, or
one that contradicts itself, raises `TinyExaoneError` naming the offending field.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from .errors import TinyExaoneError

# Upper bounds of every size read from a config, checked before anything is sized by it (each
# far above EXAONE 4.0 32B: hidden 5,120, 64 layers, vocab 102,400, 131,072 positions).
SIZE_LIMITS = {
    "hidden_size": 1 << 16, "intermediate_size": 1 << 18, "num_hidden_layers": 1024, "num_attention_heads": 1024,
    "num_key_value_heads": 1024, "head_dim": 1024, "vocab_size": 1 << 22, "max_position_embeddings": 1 << 24,
    "sliding_window": 1 << 24, "original_max_position_embeddings": 1 << 24,
}
SLIDING = "sliding_attention"
FULL = "full_attention"


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding parameters; `rope_type` is "default" or "llama3"."""

    theta: float
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class Exaone4Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    rope: RopeConfig
    sliding_window: int | None
    layer_types: tuple[str, ...]  # [num_hidden_layers] SLIDING or FULL
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    raw: dict | None = None  # the config.json as read, for tools that re-emit it

    @property
    def is_hybrid(self) -> bool:
        """True when the model has a sliding window (the 32B-like layout)."""
        return self.sliding_window is not None

    def layer_is_sliding(self, layer: int) -> bool:
        return self.layer_types[layer] == SLIDING

    def layer_uses_rope(self, layer: int) -> bool:
        """transformers: RoPE iff the model has no sliding window, or the layer is sliding."""
        return self.sliding_window is None or self.layer_types[layer] == SLIDING

    @property
    def queries_per_kv(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads


def _require_int(cfg: dict, key: str, minimum: int = 1) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TinyExaoneError(f"config.json: '{key}' must be an integer, got {value!r:.40}")
    if value < minimum:
        raise TinyExaoneError(f"config.json: '{key}' must be >= {minimum}, got {value}")
    if value > SIZE_LIMITS.get(key, math.inf):
        raise TinyExaoneError(f"config.json: '{key}' is {value}, more than tinyexaone accepts ({SIZE_LIMITS[key]})")
    return value


def _positive_float(value, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise TinyExaoneError(f"config.json: '{key}' must be a positive number, got {value!r:.40}")
    return float(value)


def _norm_eps(value) -> float:
    eps = _positive_float(value, "rms_norm_eps")
    if eps > 1.0:
        raise TinyExaoneError(f"config.json: 'rms_norm_eps' must be at most 1, got {eps!r}")
    return eps


def _bool(cfg: dict, key: str, default: bool) -> bool:
    value = cfg.get(key, default)
    if not isinstance(value, bool):
        raise TinyExaoneError(f"config.json: '{key}' must be true or false, got {value!r:.40}")
    return value


def _parse_rope(cfg: dict) -> RopeConfig:
    params = cfg.get("rope_parameters")
    scaling = cfg.get("rope_scaling")
    if params is not None and not isinstance(params, dict):
        raise TinyExaoneError(f"config.json: 'rope_parameters' must be an object, got {params!r}")
    if scaling is not None and not isinstance(scaling, dict):
        raise TinyExaoneError(f"config.json: 'rope_scaling' must be an object or null, got {scaling!r}")
    merged = dict(scaling or {})
    merged.update(params or {})
    theta = merged.get("rope_theta", cfg.get("rope_theta", 10000.0))
    theta = _positive_float(theta, "rope_theta")
    if theta <= 1.0:
        raise TinyExaoneError(f"config.json: 'rope_theta' must be > 1 (a rotary base), got {theta!r}")
    rope_type = merged.get("rope_type", merged.get("type", "default"))
    if rope_type is None:
        rope_type = "default"
    if rope_type == "default":
        return RopeConfig(theta=theta)
    if rope_type != "llama3":
        raise TinyExaoneError(f"config.json: unsupported rope_type {rope_type!r} (supported: 'llama3', 'default')")
    for key in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
        if key not in merged:
            raise TinyExaoneError(f"config.json: llama3 rope scaling is missing '{key}'")
    rope = RopeConfig(
        theta=theta,
        rope_type="llama3",
        factor=_positive_float(merged["factor"], "rope_scaling.factor"),
        low_freq_factor=_positive_float(merged["low_freq_factor"], "rope_scaling.low_freq_factor"),
        high_freq_factor=_positive_float(merged["high_freq_factor"], "rope_scaling.high_freq_factor"),
        original_max_position_embeddings=_require_int(merged, "original_max_position_embeddings"),
    )
    if rope.high_freq_factor <= rope.low_freq_factor:
        raise TinyExaoneError("config.json: llama3 rope scaling needs high_freq_factor > low_freq_factor")
    return rope


def _resolve_layer_types(cfg: dict, num_layers: int, sliding_window: int | None) -> tuple[str, ...]:
    explicit = cfg.get("layer_types")
    if explicit is not None:
        if not isinstance(explicit, list) or len(explicit) != num_layers:
            raise TinyExaoneError(
                f"config.json: 'layer_types' must list {num_layers} entries (num_hidden_layers), got {explicit!r:.80}"
            )
        for kind in explicit:
            if kind not in (SLIDING, FULL):
                raise TinyExaoneError(f"config.json: unknown layer type {kind!r:.40} in 'layer_types'")
        if SLIDING in explicit and sliding_window is None:
            raise TinyExaoneError("config.json: 'layer_types' has sliding layers but 'sliding_window' is null")
        return tuple(explicit)
    if sliding_window is None:
        return (FULL,) * num_layers
    pattern = cfg.get("sliding_window_pattern")
    if isinstance(pattern, str):
        if not pattern or set(pattern) - {"L", "G"}:
            raise TinyExaoneError(f"config.json: 'sliding_window_pattern' must use only 'L' and 'G', got {pattern!r}")
        return tuple(SLIDING if pattern[i % len(pattern)] == "L" else FULL for i in range(num_layers))
    if isinstance(pattern, int) and not isinstance(pattern, bool):
        if pattern < 1:
            raise TinyExaoneError(f"config.json: integer 'sliding_window_pattern' must be >= 1, got {pattern}")
        return tuple(FULL if (i + 1) % pattern == 0 else SLIDING for i in range(num_layers))
    if pattern is not None:
        raise TinyExaoneError(f"config.json: 'sliding_window_pattern' must be a string, an integer or null, got {pattern!r}")
    return (FULL,) * num_layers


def _token_ids(value, key: str) -> tuple[int, ...]:
    if value is None:
        return ()
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise TinyExaoneError(f"config.json: '{key}' must be a token id or a list of them, got {value!r}")
    return tuple(values)


def parse_config(cfg: dict) -> Exaone4Config:
    """Validate and resolve a config.json dictionary of `Exaone4ForCausalLM`."""
    if not isinstance(cfg, dict):
        raise TinyExaoneError("config.json: expected a JSON object")
    model_type = cfg.get("model_type")
    if model_type != "exaone4":
        raise TinyExaoneError(f"config.json: model_type is {model_type!r}, tinyexaone runs only 'exaone4' models")
    hidden = _require_int(cfg, "hidden_size")
    heads = _require_int(cfg, "num_attention_heads")
    kv_heads = _require_int(cfg, "num_key_value_heads") if "num_key_value_heads" in cfg else heads
    if heads % kv_heads:
        raise TinyExaoneError(
            f"config.json: num_attention_heads ({heads}) is not a multiple of num_key_value_heads ({kv_heads})"
        )
    if cfg.get("head_dim") is not None:
        head_dim = _require_int(cfg, "head_dim")
    elif hidden % heads:
        raise TinyExaoneError(f"config.json: hidden_size ({hidden}) is not divisible by num_attention_heads ({heads})")
    else:
        head_dim = hidden // heads
    if head_dim % 2:
        raise TinyExaoneError(f"config.json: head_dim must be even for rotary embeddings, got {head_dim}")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise TinyExaoneError(f"config.json: unsupported hidden_act {act!r} (EXAONE 4 uses 'silu')")
    num_layers = _require_int(cfg, "num_hidden_layers")
    sliding_window = cfg.get("sliding_window")
    if sliding_window is not None:
        sliding_window = _require_int(cfg, "sliding_window")
    eos = _token_ids(cfg.get("eos_token_id"), "eos_token_id")
    bos = _token_ids(cfg.get("bos_token_id"), "bos_token_id")
    pad = _token_ids(cfg.get("pad_token_id"), "pad_token_id")
    return Exaone4Config(
        vocab_size=_require_int(cfg, "vocab_size"),
        hidden_size=hidden,
        intermediate_size=_require_int(cfg, "intermediate_size"),
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=_norm_eps(cfg.get("rms_norm_eps", 1e-5)),
        max_position_embeddings=_require_int(cfg, "max_position_embeddings"),
        tie_word_embeddings=_bool(cfg, "tie_word_embeddings", False),
        rope=_parse_rope(cfg),
        sliding_window=sliding_window,
        layer_types=_resolve_layer_types(cfg, num_layers, sliding_window),
        bos_token_id=bos[0] if bos else None,
        eos_token_ids=eos,
        pad_token_id=pad[0] if pad else None,
        raw=cfg,
    )


def load_config(model_dir: str | Path) -> Exaone4Config:
    """Read `config.json` from a Hugging Face model directory."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise TinyExaoneError(f"{model_dir}: not a model directory (no config.json)")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise TinyExaoneError(f"{path}: not valid JSON ({' '.join(str(exc).split())[:200]})") from None
    return parse_config(cfg)

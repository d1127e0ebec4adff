"""tinyexaone: a framework-free CPU runtime for EXAONE 4.0 language models.

Public API: `load(path) -> ChatModel` (a `Model` with its tokenizer): `.config`, `.new_cache()`,
`.forward(token_ids, cache=None) -> logits [T, vocab]`, `.tokenizer`, and generation:
`.generate`, `.stream`, `.chat`, `.chat_session`, `.cancel`. `Model` is the pure forward pass
(`ChatModel.model`); `load_tokenizer(path) -> Tokenizer` (encode/decode, chat template).
`TinyExaoneError` is every user-facing failure; `ContextOverflowError` is the one for a
prompt or conversation that does not fit the context.

The names are imported on first use (PEP 562), so `import tinyexaone` is instant and the
command line can catch a Ctrl-C while NumPy and Numba load.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "ChatModel": "chat_model", "ContextOverflowError": "errors", "Exaone4Config": "config", "Model": "model",
    "TinyExaoneError": "errors", "Tokenizer": "tokenizer", "load": "loading", "load_tokenizer": "tokenizer",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    else:
        try:
            value = importlib.import_module(f".{name}", __name__)  # a submodule, e.g. tinyexaone.compact
        except ModuleNotFoundError:
            raise AttributeError(f"module 'tinyexaone' has no attribute {name!r}") from None
    globals()[name] = value
    return value

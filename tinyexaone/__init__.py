"""tinyexaone: a framework-free CPU runtime for EXAONE 4.0 language models.

Public API: `load(path) -> ChatModel` (a `Model` with its tokenizer): `.config`, `.new_cache()`,
`.forward(token_ids, cache=None) -> logits [T, vocab]`, `.tokenizer`, and generation:
`.generate`, `.stream`, `.chat`, `.chat_session`, `.cancel`. `Model` is the pure forward pass
(`ChatModel.model`); `load_tokenizer(path) -> Tokenizer` (encode/decode, chat template).
`TinyExaoneError` is every user-facing failure; `ContextOverflowError` is the one for a
prompt or conversation that does not fit the context.
"""

from .chat_model import ChatModel
from .config import Exaone4Config
from .errors import ContextOverflowError, TinyExaoneError
from .loading import load
from .model import Model
from .tokenizer import Tokenizer, load_tokenizer

__version__ = "0.1.0"

__all__ = ["ChatModel", "ContextOverflowError", "Exaone4Config", "Model", "TinyExaoneError", "Tokenizer", "load",
           "load_tokenizer", "__version__"]

"""tinyexaone: a framework-free CPU runtime for EXAONE 4.0 language models.

Public API: `load(path) -> Model`; `Model.config`, `Model.new_cache()`,
`Model.forward(token_ids, cache=None) -> logits [T, vocab]`; `TinyExaoneError` for every
user-facing failure. `load_tokenizer(path) -> Tokenizer` (encode/decode, chat template).
Generation (generation.py): `Model.generate`, `Model.stream`, `Model.chat`, `Model.chat_session`,
`Model.cancel`.
"""

from .config import Exaone4Config
from .errors import TinyExaoneError
from .loading import load
from .model import Model
from .tokenizer import Tokenizer, load_tokenizer

__version__ = "0.1.0"

__all__ = ["Exaone4Config", "Model", "TinyExaoneError", "Tokenizer", "load", "load_tokenizer", "__version__"]

"""How much each input column of each matrix matters, from calibration text (llama.cpp's imatrix idea).

`column_importance(src, text_file)` runs tinyexaone's own float forward pass of the Hugging
Face checkpoint `src` (its BF16 or float matrices, as `tinyexaone.load` runs them) over the
first CALIBRATION_TOKENS tokens of the UTF-8 text file, in windows of WINDOW tokens, and returns,
for every matrix that multiplies activations, the mean square of each of its input columns'
activations: {tensor name: float64 [in]}. The layer matrices are watched through a wrapper that
records each input before the product; the output head's input is the final-normed hidden
state, so a tied embedding gets the head's importance (its row lookups have no input columns).
An untied embedding gets none. The quantizer weights each column's squared error by it
(scale_fit.py), so the fitted scale favours the columns whose activations are large.

Bad input is a one-line TinyExaoneError: a missing, unreadable, oversized (> MAX_TEXT_BYTES),
non-UTF-8 or empty file, text that tokenizes to fewer than 2 tokens, a source with no tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tinyexaone.errors import TinyExaoneError
from tinyexaone.loading import open_model
from tinyexaone.tensors import LM_HEAD, EMBEDDING, model_tensors

CALIBRATION_TOKENS = 4096
WINDOW = 512  # tokens per forward pass
MAX_TEXT_BYTES = 16 << 20


class _Recorder:
    """A MatrixWeight that adds the squares of every input column to `sums` before its product."""

    def __init__(self, inner, sums: np.ndarray):
        self.inner, self.sums = inner, sums  # sums [in] float64
        self.shape, self.nbytes = inner.shape, inner.nbytes

    def matmul(self, x: np.ndarray) -> np.ndarray:
        self.sums += np.einsum("ti,ti->i", x, x, dtype=np.float64)  # x [T, in]
        return self.inner.matmul(x)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        return self.inner.rows(ids)

    def dequantize(self) -> np.ndarray:
        return self.inner.dequantize()


def read_text(path) -> str:
    """The calibration text, or a one-line error naming what is wrong with the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise TinyExaoneError(f"{path}: calibration text must be a file")
        if size > MAX_TEXT_BYTES:
            raise TinyExaoneError(f"{path}: calibration text is {size:,} bytes, over the {MAX_TEXT_BYTES:,} accepted "
                                  f"({CALIBRATION_TOKENS} tokens are used)")
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise TinyExaoneError(f"{path}: no such calibration text file") from None
    except OSError as exc:
        raise TinyExaoneError(f"{path}: cannot read the calibration text ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise TinyExaoneError(f"{path}: calibration text is not UTF-8 (byte {exc.start})") from None
    if not text.strip():
        raise TinyExaoneError(f"{path}: calibration text is empty")
    return text


def column_importance(src, text_file) -> dict[str, np.ndarray]:
    """{matrix name: mean square of each input column's activations, float64 [in]}; see the module doc."""
    text = read_text(text_file)
    model, tokenizer_loader = open_model(src)
    if tokenizer_loader is None:
        raise TinyExaoneError(f"{src}: has no tokenizer.json, which --calibration needs to read the text")
    ids = tokenizer_loader().encode(text, add_special_tokens=False)[:CALIBRATION_TOKENS]
    if len(ids) < 2:
        raise TinyExaoneError(f"{text_file}: calibration text has {len(ids)} token(s); at least 2 are needed")
    weights, sums = model.weights, {}
    for name, spec in model_tensors(model.config).items():
        if not spec.is_matrix or spec.layer is None:
            continue
        layer = weights.layers[spec.layer]
        sums[name] = np.zeros(spec.shape[1])
        setattr(layer, spec.field, _Recorder(getattr(layer, spec.field), sums[name]))
    head = LM_HEAD if LM_HEAD in model_tensors(model.config) else EMBEDDING
    sums[head] = np.zeros(model.config.hidden_size)
    weights.lm_head = _Recorder(weights.lm_head, sums[head])
    windows = [ids[i : i + WINDOW] for i in range(0, len(ids), WINDOW)]
    windows = [window for window in windows if len(window) >= 2]  # one token would take the decode path
    for window in windows:
        model.forward(window)
    count = sum(len(window) for window in windows)
    return {name: total / count for name, total in sums.items()}

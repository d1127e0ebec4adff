"""tools/quant_quality.py, the measurement of docs/quantization.md: it must read each kind of file
as the weights they hold.

A GGUF written with gguf-py (the demo model's matrices under llama.cpp's names, F32 and one Q8_0)
comes back as the same matrices under their Hugging Face names (the dims reversed back), a compact
file as its QuantizedWeights' dequantization; a model compared with itself drifts by nothing,
and `compare` prints a row per file and path.
"""

import importlib.util
from pathlib import Path

import gguf
import numpy as np

import tinyexaone
from tinyexaone.quant.convert import convert
from tinyexaone.tensors import model_tensors

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "exaone4-demo"
_spec = importlib.util.spec_from_file_location("quant_quality", ROOT / "tools" / "quant_quality.py")
quality = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(quality)
Q8_TENSOR = "model.layers.1.mlp.down_proj.weight"


def write_gguf(path: Path, model) -> dict[str, np.ndarray]:
    """The demo model's matrices as a GGUF (llama.cpp's names; one Q8_0); returns what each should read back."""
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.EXAONE4, model.config.num_hidden_layers)
    writer = gguf.GGUFWriter(str(path), "exaone4")
    expected = {}
    for name, spec in model_tensors(model.config).items():
        if not spec.is_matrix:
            continue
        owner = model.weights if spec.layer is None else model.weights.layers[spec.layer]
        matrix = getattr(owner, spec.field).dequantize()  # [out, in] float32
        gguf_name = names.get_name(name, try_suffixes=(".weight",))
        if name == Q8_TENSOR:
            data = gguf.quants.quantize(matrix, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(gguf_name, data, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            expected[name] = gguf.quants.dequantize(data, gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(gguf_name, matrix)
            expected[name] = matrix
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


def test_gguf_and_compact_files_read_back_as_their_weights(tmp_path):
    model = tinyexaone.load(DEMO).model
    expected = write_gguf(tmp_path / "demo.gguf", model)
    matrices, types = quality.gguf_matrices(tmp_path / "demo.gguf", model.config)
    assert set(matrices) == set(expected)
    for name, matrix in matrices.items():
        np.testing.assert_array_equal(matrix, expected[name], err_msg=name)
    assert types[Q8_TENSOR] == "Q8_0" and types["model.embed_tokens.weight"] == "F32"
    original = model.weights.layers[1].down_proj.dequantize()
    assert 0 < np.linalg.norm(matrices[Q8_TENSOR] - original) / np.linalg.norm(original) < 0.01

    convert(DEMO, tmp_path / "demo.tx", mixed=True, show_progress=False)
    matrices, types, kernel_model = quality.compact_matrices(tmp_path / "demo.tx")
    layer0 = kernel_model.weights.layers[0]
    np.testing.assert_array_equal(matrices["model.layers.0.self_attn.q_proj.weight"], layer0.q_proj.dequantize())
    assert types["model.layers.0.self_attn.q_proj.weight"] == "int6 g32"  # the demo's 192 columns: int6, not int6k
    assert types["model.layers.3.mlp.up_proj.weight"] == "int4 g32"


def test_a_model_compared_with_itself_does_not_drift(tmp_path, capsys):
    chat_model = quality.float_model(DEMO)
    windows = quality.text_windows(chat_model.tokenizer, 300)
    assert [len(w) for w in windows] == [256, 44]
    reference = [quality.log_softmax(chat_model.model.forward(ids)) for ids in windows]
    kl, top1 = quality.drift(reference, chat_model.model, windows)
    assert abs(kl) < 1e-9 and top1 == 1.0
    write_gguf(tmp_path / "demo.gguf", chat_model.model)
    convert(DEMO, tmp_path / "demo.tx", show_progress=False)
    quality.compare(DEMO, [tmp_path / "demo.tx", tmp_path / "demo.gguf"], 300, None, True, [Q8_TENSOR])
    out = capsys.readouterr().out
    rows = {tuple(cell.strip() for cell in line.split("|")[1:3]): line.split("|")
            for line in out.splitlines() if line.startswith("| demo")}
    assert set(rows) == {("demo.tx", "kernels"), ("demo.tx", "weights"), ("demo.gguf", "float")}
    gguf_kl, tx_kl = float(rows[("demo.gguf", "float")][4]), float(rows[("demo.tx", "weights")][4])
    assert gguf_kl < 1e-4 < tx_kl < 0.05  # F32 copies (and one Q8_0) against int4
    assert f"{Q8_TENSOR}: demo.tx int4 g32" in out and "demo.gguf Q8_0" in out


def test_jitter_moves_every_matrix_by_its_scale_and_nothing_else(tmp_path):
    """`jitter` on the demo model (bf16): the files beside the weights copied, each matrix x (1 +
    0.001 N(0, 1)) (relative change 0.001 within sampling), the norms bit for bit, the same seed
    the same bytes and another seed other ones."""
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        quality.write_jittered(DEMO, tmp_path / name, seed, 1e-3)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (DEMO / "tokenizer.json").read_bytes()
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert (tmp_path / "a" / "model.safetensors").read_bytes() != (tmp_path / "c" / "model.safetensors").read_bytes()
    original, jittered = tinyexaone.load(DEMO).model, tinyexaone.load(tmp_path / "a").model
    for name, spec in model_tensors(original.config).items():
        owner = [m.weights if spec.layer is None else m.weights.layers[spec.layer] for m in (original, jittered)]
        before, after = (getattr(o, spec.field) for o in owner)
        if spec.is_matrix:
            before, after = before.dequantize().astype(np.float64), after.dequantize().astype(np.float64)
            relative = np.sqrt(np.sum((after - before) ** 2) / np.sum(before ** 2))
            assert 0.0009 < relative < 0.0011, name
        else:
            np.testing.assert_array_equal(after, before, err_msg=name)

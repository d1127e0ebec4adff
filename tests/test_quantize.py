"""`tinyexaone quantize`: accuracy of the compact model, the conversion's streaming and its safety.

Accuracy is measured on tiny transformers-built models (tied global, and untied hybrid with a
sliding window): the compact model's logits over 200 positions against the float32 tinyexaone
model of the same checkpoint (itself verified against transformers in test_forward_reference):
int8 cosine >= 0.999 with >= 92% argmax agreement, int4 g32 cosine >= 0.90. The conversion
is checked to give byte-identical files however the matrices are sliced, to record every
scheme, to refuse an existing OUT (exit 2, one line) and a SRC that is not a model, and to
leave neither OUT nor a temporary file behind when it fails or is interrupted by SIGINT or
SIGTERM in a subprocess (slowed by tests/slow_cli.py). The mixed int4 recipe (the command
line's default) is checked tensor by tensor against its statement in docs/quantization.md, and
`--calibration` against an independent computation of layer 0's input importance and against
every kind of bad text file (one-line errors, no output left).
"""

import errno
import importlib.util
import json
import shutil
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import tinyexaone
from reference_models import LAYOUTS, build_reference_model
from tinyexaone.cli.main import main
from tinyexaone.compact import open_compact
from tinyexaone.errors import TinyExaoneError
from tinyexaone.quant import convert as convert_module
from tinyexaone.quant.convert import convert

ROOT = Path(__file__).resolve().parents[1]
SLOW_CLI = ROOT / "tests" / "slow_cli.py"
_spec = importlib.util.spec_from_file_location("make_synthetic_checkpoint", ROOT / "tools" / "make_synthetic_checkpoint.py")
synthetic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(synthetic)

SYNTHETIC = dict(
    synthetic.EXAONE_4_0_1_2B, hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
    head_dim=32, vocab_size=300, num_hidden_layers=2, layer_types=["full_attention"] * 2, max_position_embeddings=512,
    tie_word_embeddings=False,
)
# Reference layouts whose matrix input sizes are multiples of 32 (group size 32 needs that).
ACCURACY_LAYOUTS = {
    "tied_global": LAYOUTS["global_tied_llama3"],
    "untied_hybrid": dict(LAYOUTS["hybrid_lllg_untied"], hidden_size=64, intermediate_size=96, head_dim=16),
}
POSITIONS = 200
SEEDS = (0, 1, 2)


def temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture(scope="module", params=sorted(ACCURACY_LAYOUTS))
def reference_dirs(request, tmp_path_factory):
    """Three seeds of one layout: agreement is pooled over their 600 positions."""
    dirs = []
    for seed in SEEDS:
        directory = tmp_path_factory.mktemp(f"{request.param}-{seed}")
        build_reference_model(directory, seed=seed, **ACCURACY_LAYOUTS[request.param])
        dirs.append(directory)
    return dirs


@pytest.fixture(scope="module")
def synthetic_src(tmp_path_factory):
    return synthetic.write_synthetic_checkpoint(tmp_path_factory.mktemp("synthetic"), SYNTHETIC, seed=2)


def logits_pairs(directories, tmp_path, **scheme):
    """(compact logits, float32 logits), each [seeds * POSITIONS, vocab], over the same random ids."""
    ours, ref = [], []
    for i, directory in enumerate(directories):
        out = tmp_path / f"{i}.tx"
        convert(directory, out, show_progress=False, **scheme)
        float_model = tinyexaone.load(directory)
        ids = np.random.default_rng(4).integers(0, float_model.config.vocab_size, POSITIONS)
        ours.append(tinyexaone.load(out).forward(ids))
        ref.append(float_model.forward(ids))
    return ours, ref


def cosine(a, b) -> float:
    return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))


def test_int8_matches_float32(reference_dirs, tmp_path):
    ours, ref = logits_pairs(reference_dirs, tmp_path, bits=8, group_size=32, embedding_bits=8)
    for a, b in zip(ours, ref):
        assert cosine(a, b) >= 0.999, cosine(a, b)
    # top-1 agreement on random models, whose top logits are close: int8 weights and the int8
    # rounding of every matrix input (as llama.cpp rounds its activations to q8) gave 0.94-0.97
    agreement = np.mean([(a.argmax(axis=1) == b.argmax(axis=1)).mean() for a, b in zip(ours, ref)])
    assert agreement >= 0.92, agreement


def test_int4_g32_matches_float32(reference_dirs, tmp_path):
    """The issue asks for cosine >= 0.99. On these random models that is out of reach for any 4-bit
    code: a matrix keeps ~8.5% relative error at int4 g32 (>= 6.25% even for an ideal 4-bit
    quantizer of Gaussian weights), and the ~20 independent matrix errors add up to ~35% in the
    logits (cosine 0.92-0.97); Gaussian noise of the same relative size in every matrix does no
    better (0.91-0.93; see docs/format.md). This bound still catches a broken int4 path."""
    ours, ref = logits_pairs(reference_dirs, tmp_path, bits=4, group_size=32, embedding_bits=8)
    for a, b in zip(ours, ref):
        assert cosine(a, b) >= 0.90, cosine(a, b)


def test_untied_head_is_stored_with_the_embedding_bits(tmp_path):
    directory = tmp_path / "m"
    build_reference_model(directory, seed=3, **ACCURACY_LAYOUTS["untied_hybrid"])
    convert(directory, tmp_path / "m.tx", bits=8, group_size=32, embedding_bits=4, show_progress=False)
    model = tinyexaone.load(tmp_path / "m.tx").model
    assert model.weights.lm_head is not model.weights.embed_tokens
    assert (model.weights.lm_head.bits, model.weights.embed_tokens.bits, model.weights.layers[0].q_proj.bits) == (4, 4, 8)


@pytest.mark.parametrize("bits,group_size,embedding_bits", [(4, 64, 8), (8, 128, 4), (4, 128, 4)])
def test_schemes_are_recorded_and_slicing_does_not_change_the_file(synthetic_src, tmp_path, monkeypatch,
                                                                   bits, group_size, embedding_bits):
    scheme = dict(bits=bits, group_size=group_size, embedding_bits=embedding_bits, show_progress=False)
    whole = convert(synthetic_src, tmp_path / "whole.tx", **scheme)
    monkeypatch.setattr(convert_module, "SLICE_ELEMENTS", 7 * 128)  # 7 rows of 128 (or 3 of 256) per slice
    convert(synthetic_src, tmp_path / "sliced.tx", **scheme)
    assert (tmp_path / "whole.tx").read_bytes() == (tmp_path / "sliced.tx").read_bytes()
    quant = open_compact(tmp_path / "whole.tx").quantization
    assert (quant["bits"], quant["group_size"], quant["embedding_bits"]) == (bits, group_size, embedding_bits)
    embedding_group = 128 if embedding_bits == 8 else group_size  # int8 embeddings use group 128
    for name, spec in quant["tensors"].items():
        if spec["scheme"] != "float32":
            head = name in ("model.embed_tokens.weight", "lm_head.weight")
            expected = (f"int{embedding_bits}", embedding_group) if head else (f"int{bits}", group_size)
            assert (spec["scheme"], spec["group_size"]) == expected, name
    assert set(whole.relative_errors) == {n for n, s in quant["tensors"].items() if s["scheme"] != "float32"}
    assert 0 < whole.worst_error[1] < (0.2 if 4 in (bits, embedding_bits) else 0.02)
    matrix_bits = {4: 4 + 16 / group_size, 8: 8 + 16 / min(group_size, embedding_group)}
    assert min(matrix_bits.values()) <= whole.matrix_bits_per_weight <= max(matrix_bits.values())


def test_sharded_float32_source_gives_the_same_arrays(synthetic_src, tmp_path):
    from safetensors.numpy import save_file

    from tinyexaone.checkpoint import open_checkpoint

    checkpoint = open_checkpoint(synthetic_src)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text((synthetic_src / "config.json").read_text())
    names = sorted(checkpoint.entries)
    weight_map = {}
    for shard, part in (("model-00001-of-00002.safetensors", names[::2]), ("model-00002-of-00002.safetensors", names[1::2])):
        save_file({name: np.ascontiguousarray(checkpoint.float32(name)) for name in part}, str(sharded / shard))
        weight_map.update(dict.fromkeys(part, shard))
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    convert(synthetic_src, tmp_path / "single.tx", show_progress=False)
    convert(sharded, tmp_path / "sharded.tx", show_progress=False)
    single, split = open_compact(tmp_path / "single.tx"), open_compact(tmp_path / "sharded.tx")
    assert set(single.entries) == set(split.entries)
    for name in single.entries:
        np.testing.assert_array_equal(single.array(name), split.array(name))


# --- the command line ----------------------------------------------------------------------------------------


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_quantize_prints_size_bits_error_and_time(synthetic_src, tmp_path, capsys):
    out = tmp_path / "model.tx"
    code, stdout, _ = run_cli(capsys, "quantize", synthetic_src, out, "--bits", "4", "--group-size", "32")
    assert code == 0 and out.is_file()
    assert f"{out.stat().st_size:,} bytes" in stdout
    assert "bits/weight" in stdout and "worst relative error" in stdout and "time" in stdout
    assert temp_files(tmp_path) == []


def test_existing_out_needs_force(synthetic_src, tmp_path, capsys):
    out = tmp_path / "model.tx"
    out.write_bytes(b"precious")
    code, stdout, err = run_cli(capsys, "quantize", synthetic_src, out)
    assert code == 2 and err.count("\n") == 1 and "already exists" in err and "--force" in err
    assert out.read_bytes() == b"precious"
    code, _, _ = run_cli(capsys, "quantize", synthetic_src, out, "--force", "--bits", "8")
    assert code == 0 and open_compact(out).quantization["bits"] == 8


@pytest.mark.parametrize("kind", ["no_config", "missing", "a_file", "out_is_directory", "bad_group_size"])
def test_bad_paths_are_one_line_errors(synthetic_src, tmp_path, capsys, kind):
    src, out = synthetic_src, tmp_path / "model.tx"
    if kind == "no_config":
        src = tmp_path / "empty"
        src.mkdir()
    elif kind == "missing":
        src = tmp_path / "nowhere"
    elif kind == "a_file":
        src = synthetic_src / "model.safetensors"
    elif kind == "out_is_directory":
        out = tmp_path
    args = ["quantize", src, out] + (["--group-size", "128"] if kind == "bad_group_size" else [])
    if kind == "bad_group_size":  # a model whose 96-wide MLP input is not a multiple of 128
        src = tmp_path / "narrow"
        synthetic.write_synthetic_checkpoint(src, dict(SYNTHETIC, intermediate_size=96), seed=1)
        args[1] = src
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert not (tmp_path / "model.tx").exists() and temp_files(tmp_path) == []


def test_failure_mid_way_leaves_no_file(synthetic_src, tmp_path):
    """A NaN in the last tensor: the error names it, and the half-written output is removed."""
    src = tmp_path / "src"
    synthetic.write_synthetic_checkpoint(src, SYNTHETIC, seed=2)
    raw = bytearray((src / "model.safetensors").read_bytes())
    n = struct.unpack("<Q", raw[:8])[0]
    begin = json.loads(raw[8 : 8 + n])["lm_head.weight"]["data_offsets"][0]
    raw[8 + n + begin : 8 + n + begin + 2] = b"\xc0\x7f"  # bf16 NaN
    (src / "model.safetensors").write_bytes(bytes(raw))
    out = tmp_path / "out" / "model.tx"
    out.parent.mkdir()
    with pytest.raises(TinyExaoneError, match="lm_head.weight.*NaN"):
        convert(src, out, show_progress=False)
    assert list(out.parent.iterdir()) == []


def test_full_disk_is_one_line_and_leaves_no_file(synthetic_src, tmp_path, monkeypatch, capsys):
    def no_space(self, name, parts):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(convert_module.CompactWriter, "add_stacked", no_space)
    code, _, err = run_cli(capsys, "quantize", synthetic_src, tmp_path / "model.tx")
    last_line = err.strip().splitlines()[-1]  # after the progress bar's label
    assert code == 2 and last_line.startswith("error: ") and "No space left on device" in last_line
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("signum,exit_code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_interrupted_quantize_leaves_no_output(synthetic_src, tmp_path, signum, exit_code):
    out = tmp_path / "model.tx"
    process = subprocess.Popen(
        [sys.executable, str(SLOW_CLI), "0.25", "quantize", str(synthetic_src), str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,  # the installed package, not ./tinyexaone
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # even if our parent ignores SIGINT
    )
    try:
        deadline = time.monotonic() + 60
        while not temp_files(tmp_path):  # conversion has started writing
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "conversion never started"
            time.sleep(0.05)
        time.sleep(0.4)  # a tensor or two in
        assert process.poll() is None, "conversion finished before the signal"
        process.send_signal(signum)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == exit_code, err
    assert not out.exists() and temp_files(tmp_path) == [], err
    assert b"Traceback" not in err


@pytest.mark.parametrize("how", ["the file itself", "a hard link", "a symlink"])
@pytest.mark.parametrize("victim", ["model.safetensors", "config.json"])
def test_force_never_overwrites_a_source_file(synthetic_src, tmp_path, capsys, how, victim):
    src = tmp_path / "src"
    shutil.copytree(synthetic_src, src)
    before = (src / victim).read_bytes()
    out = src / victim
    if how == "a hard link":
        out = tmp_path / "link.tx"
        os.link(src / victim, out)
    elif how == "a symlink":
        out = tmp_path / "link.tx"
        out.symlink_to(src / victim)
    code, _, err = run_cli(capsys, "quantize", src, out, "--force")
    assert code == 2 and "is one of the source model's files" in err and err.count("\n") == 1
    assert (src / victim).read_bytes() == before


# --- the mixed int4 recipe and calibration --------------------------------------------------------------------

DEMO = ROOT / "models" / "exaone4-demo"


def mixed_rule(name: str) -> tuple[str, int]:
    """The mixed recipe as docs/quantization.md states it, for a model of 4 layers and input sizes
    128 (no super-blocks: int6 and int4 g32, the head int8 g64) and 256 (down_proj: int6k and int4k)."""
    if name in ("model.embed_tokens.weight", "lm_head.weight"):
        return "int8", 64
    layer, kind = int(name.split(".")[2]), name.split(".")[-2]
    if kind == "down_proj":
        return ("int6k", 32) if layer == 3 else ("int4k", 32)  # the last eighth of 4 layers: layer 3
    if kind in ("k_proj", "v_proj") or (layer == 0 and kind == "q_proj"):
        return "int6", 32
    return "int4", 32


def test_the_command_line_default_is_the_mixed_recipe(tmp_path, capsys):
    src = synthetic.write_synthetic_checkpoint(tmp_path / "src", dict(SYNTHETIC, num_hidden_layers=4,
                                                                     layer_types=["full_attention"] * 4), seed=5)
    for args, mixed in (((), True), (("--recipe", "uniform"), False)):
        out = tmp_path / f"{mixed}.tx"
        code, _, _ = run_cli(capsys, "quantize", src, out, *args)
        assert code == 0
        quant = open_compact(out).quantization
        for name, spec in quant["tensors"].items():
            if spec["scheme"] != "float32":
                head = name in ("model.embed_tokens.weight", "lm_head.weight")
                expected = mixed_rule(name) if mixed else (("int8", 128) if head else ("int4", 32))
                assert (spec["scheme"], spec["group_size"]) == expected, name
    # the API keeps one scheme unless asked
    whole = convert(src, tmp_path / "api.tx", show_progress=False)
    assert {s["group_size"] for n, s in open_compact(whole.out).quantization["tensors"].items()
            if s["scheme"] == "int4"} == {32}


def test_mixed_recipe_falls_back_to_int6_and_int4_where_the_input_size_has_no_super_blocks(tmp_path):
    """The demo model's input sizes 192 and 576: int6k becomes int6 g32 (k/v, the last layer's
    down_proj, layer 0's q_proj), int4k int4 g32 and the head int8 g64 (192 = 3 x 64); the embedded
    tokenizer makes the file version 4."""
    report = convert(DEMO, tmp_path / "demo.tx", mixed=True, show_progress=False)
    tensors = open_compact(report.out).quantization["tensors"]
    kinds = {name: (spec["scheme"], spec.get("group_size")) for name, spec in tensors.items()}
    assert kinds["model.embed_tokens.weight"] == ("int8", 64)
    assert kinds["model.layers.0.self_attn.q_proj.weight"] == ("int6", 32)
    assert kinds["model.layers.3.mlp.down_proj.weight"] == kinds["model.layers.2.self_attn.v_proj.weight"] == ("int6", 32)
    assert kinds["model.layers.1.self_attn.q_proj.weight"] == kinds["model.layers.2.mlp.down_proj.weight"] == ("int4", 32)
    assert not {"int4k", "int6k"} & {spec["scheme"] for spec in tensors.values()}  # 192 and 576: no multiples of 256
    assert open_compact(report.out).format_version == 4  # int6 needs 3; the embedded tokenizer, compressed, 4


def test_mixed_head_without_super_blocks_is_int8_g64_or_g32(tmp_path):
    """An untied model of hidden size 96 (a multiple of 32, not of 64): both heads int8 g32; layer
    matrices as the recipe states (down_proj's input 256 has super-blocks)."""
    config = dict(SYNTHETIC, hidden_size=96, num_attention_heads=3, num_key_value_heads=1, num_hidden_layers=4,
                  layer_types=["full_attention"] * 4)
    src = synthetic.write_synthetic_checkpoint(tmp_path / "src", config, seed=3)
    tensors = open_compact(convert(src, tmp_path / "out.tx", mixed=True, show_progress=False).out).quantization["tensors"]
    for name, spec in tensors.items():
        if spec["scheme"] == "float32":
            continue
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            expected = ("int8", 32)
        else:
            layer, kind = int(name.split(".")[2]), name.split(".")[-2]
            six = kind in ("k_proj", "v_proj") or (kind == "down_proj" and layer == 3) or (kind, layer) == ("q_proj", 0)
            expected = ((("int6k" if six else "int4k"), 32) if kind == "down_proj" else (("int6" if six else "int4"), 32))
        assert (spec["scheme"], spec["group_size"]) == expected, name


def test_calibration_weights_are_the_mean_square_of_each_input_column(tmp_path):
    """Layer 0's q/k/v read the embedding rows themselves (EXAONE 4 has no norm before attention), so
    their importance is the mean square of the text's embedding rows; the file then holds exactly
    what quantize() with those column weights produces."""
    from tinyexaone.checkpoint import open_checkpoint
    from tinyexaone.quant.calibration import CALIBRATION_TOKENS, column_importance
    from tinyexaone.quantized import quantize

    text = tmp_path / "calibration.txt"
    text.write_text("What is 12 + 30? 12 + 30 = 42. 안녕하세요! ¿Cuánto es 7 + 8?\n" * 20, encoding="utf-8")
    importance = column_importance(DEMO, text)
    ids = tinyexaone.load(DEMO).tokenizer.encode(text.read_text(encoding="utf-8"), add_special_tokens=False)
    rows = open_checkpoint(DEMO).float32("model.embed_tokens.weight")[ids[:CALIBRATION_TOKENS]]  # [T, hidden]
    for kind in ("q_proj", "k_proj", "v_proj"):
        np.testing.assert_allclose(importance[f"model.layers.0.self_attn.{kind}.weight"], (rows * rows).mean(axis=0),
                                   rtol=1e-5)
    matrices = {name for name, spec in model_tensors_of(DEMO).items() if spec.is_matrix}
    assert set(importance) == matrices  # the tied embedding gets the head's input importance
    assert all(np.isfinite(v).all() and (v >= 0).all() and v.any() for v in importance.values())
    out = tmp_path / "calibrated.tx"
    convert(DEMO, out, calibration=text, show_progress=False)
    name = "model.layers.1.mlp.down_proj.weight"
    expected = quantize(open_checkpoint(DEMO).float32(name), 4, 32, importance[name])
    stored = tinyexaone.load(out).model.weights.layers[1].down_proj
    for key, array in expected.arrays.items():
        np.testing.assert_array_equal(stored.arrays[key], array)
    plain = quantize(open_checkpoint(DEMO).float32(name), 4, 32)
    assert not np.array_equal(plain.arrays["scales"], expected.arrays["scales"])  # the weights changed something


def model_tensors_of(directory):
    from tinyexaone.config import load_config
    from tinyexaone.tensors import model_tensors

    return model_tensors(load_config(directory))


@pytest.mark.parametrize("kind", ["missing", "empty", "blank", "not_utf8", "directory", "one_token", "too_large",
                                  "no_tokenizer", "gguf_source"])
def test_bad_calibration_is_a_one_line_error(tmp_path, capsys, monkeypatch, kind):
    from tinyexaone.quant import calibration

    src, text = DEMO, tmp_path / "calibration.txt"
    messages = {"missing": "no such calibration text file", "empty": "calibration text is empty",
                "blank": "calibration text is empty", "not_utf8": "not UTF-8", "directory": "must be a file",
                "one_token": "at least 2 are needed", "too_large": "over the 64 accepted",
                "no_tokenizer": "has no tokenizer.json", "gguf_source": "needs a Hugging Face model directory"}
    if kind == "empty":
        text.write_bytes(b"")
    elif kind == "blank":
        text.write_text(" \n\t\n")
    elif kind == "not_utf8":
        text.write_bytes(b"caf\xe9 au lait")
    elif kind == "directory":
        text.mkdir()
    elif kind == "one_token":
        text.write_text("7")
    elif kind == "too_large":
        monkeypatch.setattr(calibration, "MAX_TEXT_BYTES", 64)
        text.write_text("x" * 65)
    elif kind == "no_tokenizer":
        src = synthetic.write_synthetic_checkpoint(tmp_path / "src", SYNTHETIC, seed=1)
        text.write_text("some calibration text")
    elif kind == "gguf_source":
        src = tmp_path / "model.gguf"
        src.write_bytes(b"GGUF" + bytes(60))
        text.write_text("some calibration text")
    out = tmp_path / "model.tx"
    code, _, err = run_cli(capsys, "quantize", src, out, "--calibration", text)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and messages[kind] in err, err
    assert not out.exists() and temp_files(tmp_path) == []


def test_quantize_with_calibration_on_the_command_line(tmp_path, capsys):
    text = tmp_path / "calibration.txt"
    text.write_text("Hello! What is 3 + 4? 3 + 4 = 7.\n" * 10)
    out = tmp_path / "model.tx"
    code, stdout, _ = run_cli(capsys, "quantize", DEMO, out, "--calibration", text)
    assert code == 0 and "worst relative error" in stdout
    logits = tinyexaone.load(out).forward([1, 2, 3])
    assert np.isfinite(logits).all()

"""The compact file format: layout, safetensors compatibility, validation of damaged and hostile files.

A tiny random bf16 checkpoint (tools/make_synthetic_checkpoint.py; no torch needed) is converted
once; the tests then read the file back independently of tinyexaone (their own header parser,
the `safetensors` library), and damage copies of it: truncation, flipped bytes, a newer format
version, offsets outside the file, wrong shapes and dtypes, misalignment, gaps and overlaps.
Header edits are re-sealed with a correct header checksum (computed as docs/format.md says), so
the reader's checks behind the checksum are exercised too. Every failure must be one
`TinyExaoneError` line. Two fuzz tests (reduced counts here, 2,000 cases each with `-m slow`):
random byte-level mutations of the file, and well-formed re-sealed headers with one field of a
tensor entry or of the quantization/integrity records replaced by another JSON value.
"""

import base64
import hashlib
import importlib.util
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from byte_mutations import BYTE_MUTATIONS, header_intact, header_length, mutate_bytes

import tinyexaone
from tinyexaone.cli.main import main
from tinyexaone import compact as compact_module
from tinyexaone.compact import open_compact, verify_data
from tinyexaone.errors import TinyExaoneError
from tinyexaone.quant.convert import convert
from tinyexaone.model import Model
from tinyexaone.quantized import quantize
from tinyexaone.tensors import model_tensors
from tinyexaone.weights import DenseWeight, LayerWeights, ModelWeights

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_TOKENIZER = Path(__file__).parent / "fixtures" / "exaone-4.0-1.2b"
_spec = importlib.util.spec_from_file_location("make_synthetic_checkpoint", ROOT / "tools" / "make_synthetic_checkpoint.py")
synthetic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(synthetic)

TINY = dict(
    synthetic.EXAONE_4_0_1_2B, hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
    head_dim=32, vocab_size=300, num_hidden_layers=2, layer_types=["full_attention"] * 2, max_position_embeddings=512,
)
CHECKSUM_MARK = b'"header_sha256":"'


# --- an independent reader/editor of the format, written from docs/format.md -------------------------------


def split(raw: bytes) -> tuple[int, dict]:
    n = struct.unpack("<Q", raw[:8])[0]
    return n, json.loads(raw[8 : 8 + n])


def seal(prefix: bytes) -> bytes:
    """Set header_sha256 = SHA-256 of the first 8 + N bytes with those 64 digits as '0'."""
    at = prefix.index(CHECKSUM_MARK) + len(CHECKSUM_MARK)
    zeroed = prefix[:at] + b"0" * 64 + prefix[at + 64 :]
    return prefix[:at] + hashlib.sha256(zeroed).hexdigest().encode() + prefix[at + 64 :]


def rewrite_header(raw: bytes, edit) -> bytes:
    """Apply edit(header dict) and write the header back with the same length, re-sealed."""
    n, header = split(raw)
    edit(header)
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= n, "edited header no longer fits"
    return seal(raw[:8] + text + b" " * (n - len(text))) + raw[8 + n :]


def edit_metadata_json(key, edit):
    def apply(header):
        value = json.loads(header["__metadata__"][key])
        edit(value)
        header["__metadata__"][key] = json.dumps(value, separators=(",", ":"))
    return apply


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return synthetic.write_synthetic_checkpoint(tmp_path_factory.mktemp("src"), TINY, seed=5)


@pytest.fixture(scope="module")
def compact(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "tiny.tx"
    convert(source, out, bits=4, group_size=32, embedding_bits=8, show_progress=False)
    return out


@pytest.fixture
def damaged(compact, tmp_path):
    """write(raw) -> path of a copy holding `raw`."""
    def write(raw: bytes) -> Path:
        path = tmp_path / "damaged.tx"
        path.write_bytes(raw)
        return path
    return write


def assert_one_line_error(path: Path, *fragments: str):
    with pytest.raises(TinyExaoneError) as info:
        tinyexaone.load(path)
    message = str(info.value)
    assert "\n" not in message and message
    for fragment in fragments:
        assert fragment in message, message


# --- layout --------------------------------------------------------------------------------------------------


def test_every_tensor_is_aligned_and_the_data_region_has_no_gaps(compact):
    raw = compact.read_bytes()
    n, header = split(raw)
    assert (8 + n) % 64 == 0
    spans = sorted((entry["data_offsets"], name) for name, entry in header.items() if name != "__metadata__")
    position = 0
    for (begin, end), name in spans:
        assert begin == position
        if not name.startswith("__padding__."):
            assert (8 + n + begin) % 64 == 0, name
        position = end
    assert 8 + n + position == len(raw)


def test_metadata_holds_format_config_quantization_and_integrity(compact, source):
    meta = split(compact.read_bytes())[1]["__metadata__"]
    assert meta["format"] == "tinyexaone-compact" and meta["format_version"] == "2"
    assert json.loads(meta["config.json"]) == json.loads((source / "config.json").read_text())
    quant = json.loads(meta["quantization"])
    assert (quant["bits"], quant["group_size"], quant["embedding_bits"]) == (4, 32, 8)
    assert quant["tensors"]["model.embed_tokens.weight"]["scheme"] == "int8"
    assert quant["tensors"]["model.layers.1.mlp.down_proj.weight"]["scheme"] == "int4"
    assert quant["tensors"]["model.norm.weight"]["scheme"] == "float32"
    assert "lm_head.weight" not in quant["tensors"]  # tied: the embedding is stored once
    integrity = json.loads(meta["integrity"])
    data = compact.read_bytes()[8 + split(compact.read_bytes())[0] :]
    assert integrity["data_sha256"] == hashlib.sha256(data).hexdigest()


def test_safetensors_library_reads_the_file(compact):
    from safetensors import safe_open

    model = open_compact(compact)
    with safe_open(str(compact), framework="numpy") as f:
        assert f.metadata()["format"] == "tinyexaone-compact"
        names = set(f.keys())
        assert set(model.entries) <= names
        for name in model.entries:
            np.testing.assert_array_equal(f.get_tensor(name), model.array(name))


def test_the_file_holds_exactly_what_quantize_produces(compact, source):
    ckpt = tinyexaone.checkpoint.open_checkpoint(source)
    model = tinyexaone.load(compact).model
    layer = model.weights.layers[1]
    for name, weight, bits, group in [
        ("model.layers.1.mlp.gate_proj.weight", layer.gate_proj, 4, 32),
        ("model.layers.1.self_attn.o_proj.weight", layer.o_proj, 4, 32),
        ("model.embed_tokens.weight", model.weights.embed_tokens, 8, 128),  # int8 embeddings use group 128
    ]:
        expected = quantize(ckpt.float32(name), bits, group)
        assert weight.bits == bits and weight.group_size == group and weight.shape == expected.shape
        for key, array in expected.arrays.items():
            np.testing.assert_array_equal(weight.arrays[key], array)
    np.testing.assert_array_equal(layer.q_norm, ckpt.float32("model.layers.1.self_attn.q_norm.weight"))
    assert model.weights.lm_head is model.weights.embed_tokens


def test_weights_are_read_only_views_of_one_memory_map(compact):
    model = tinyexaone.load(compact).model
    layer = model.weights.layers[0]
    for array in [layer.q_norm, model.weights.norm, *layer.up_proj.arrays.values(),
                  *model.weights.embed_tokens.arrays.values()]:
        assert not array.flags.writeable and not array.flags.owndata
        assert array.ctypes.data % 64 == 0
    assert model.weights.norm.dtype == np.float32


def test_compact_model_computes_the_float_model_of_its_dequantized_weights(compact):
    """Same forward pass: the compact model equals a float32 model holding the dequantized matrices."""
    model = tinyexaone.load(compact).model
    w = model.weights
    dense = lambda q: DenseWeight(q.dequantize())  # noqa: E731
    layers = [
        LayerWeights(**{field: dense(value) if hasattr(value, "dequantize") else value
                        for field, value in vars(layer).items()})
        for layer in w.layers
    ]
    embed = dense(w.embed_tokens)
    reference = Model(model.config, ModelWeights(embed_tokens=embed, layers=layers, norm=w.norm, lm_head=embed))
    ids = np.random.default_rng(3).integers(0, TINY["vocab_size"], 64)
    ours = model.forward(ids, model.new_cache(cache_type="f32"))  # float16 keys would round the two models'
    expected = reference.forward(ids, reference.new_cache(cache_type="f32"))  # tiny differences apart
    # the only difference left is the int8 rounding of each matrix input (kernels.py: <= half a
    # step per element, ~0.5% rms per matrix); a wrong weight or layout gives tens of percent
    relative = np.linalg.norm(ours - expected) / np.linalg.norm(expected)
    print(f"relative L2 difference {relative:.4f}")
    assert relative < 0.03, relative


# --- embedded files and the tokenizer ------------------------------------------------------------------------


def test_embedded_files_round_trip(compact, source):
    files = open_compact(compact).files
    assert list(files) == ["config.json"]
    assert json.loads(files["config.json"]) == json.loads((source / "config.json").read_text())
    assert tinyexaone.load(compact).tokenizer is None


def test_tokenizer_files_are_embedded_and_attached(source, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(source, src)
    names = [p.name for p in FIXTURE_TOKENIZER.iterdir() if p.name in synthetic.TOKENIZER_FILES]
    for name in names:
        shutil.copyfile(FIXTURE_TOKENIZER / name, src / name)
    out = tmp_path / "with-tokenizer.tx"
    convert(src, out, bits=8, group_size=128, show_progress=False)
    files = open_compact(out).files
    for name in names:  # JSON files are stored minified
        text = (src / name).read_text(encoding="utf-8")
        assert json.loads(files[name]) == json.loads(text) if name.endswith(".json") else files[name] == text, name
    from safetensors import safe_open

    with safe_open(str(out), framework="numpy") as f:  # format version 4: stored compressed, base64
        metadata = f.metadata()
    assert metadata["format_version"] == "4"
    stored = metadata["tokenizer.json"]
    assert zlib.decompress(base64.b64decode(stored)).decode("utf-8") == files["tokenizer.json"]
    assert len(stored) < len(files["tokenizer.json"].encode("utf-8")) / 2
    expected = tinyexaone.load_tokenizer(FIXTURE_TOKENIZER).encode("안녕하세요, EXAONE!")
    assert tinyexaone.load(out).tokenizer.encode("안녕하세요, EXAONE!") == expected
    assert tinyexaone.load_tokenizer(out).encode("안녕하세요, EXAONE!") == expected


def test_version_3_files_with_plain_embedded_files_still_load():
    """The shipped demo files were written before version 4: their embedded texts are plain."""
    demo = Path(__file__).resolve().parents[1] / "models" / "exaone4-demo"
    for name in ("exaone4-demo-int4.tx", "exaone4-demo-int8.tx"):
        compact = open_compact(demo / name)
        assert compact.format_version < 4 and compact.files["tokenizer.json"].startswith("{")
        assert tinyexaone.load(demo / name).tokenizer.encode("hello") == tinyexaone.load_tokenizer(demo).encode("hello")


@pytest.mark.parametrize("stored, message", [
    ("not base64 at all!", "not valid compressed"),
    (base64.b64encode(b"\x00" * 40).decode(), "not valid compressed"),  # base64, but no zlib stream
    (base64.b64encode(zlib.compress(b'{"a": 1}')[:-3]).decode(), "cut short"),
    (base64.b64encode(zlib.compress(b'{"a": 1}') + b"junk").decode(), "followed by junk"),
    (base64.b64encode(zlib.compress(b"\xff\xfe not UTF-8")).decode(), "not valid compressed UTF-8"),
    (base64.b64encode(zlib.compress(b" " * (compact_module.MAX_EMBEDDED_BYTES + 1))).decode(), "larger than 64 MB"),
])
def test_a_damaged_compressed_embedded_file_is_one_error(source, tmp_path, stored, message):
    src = tmp_path / "src"
    shutil.copytree(source, src)
    shutil.copyfile(FIXTURE_TOKENIZER / "tokenizer.json", src / "tokenizer.json")
    out = tmp_path / "with-tokenizer.tx"
    convert(src, out, bits=8, group_size=128, show_progress=False)

    def replace(header):
        header["__metadata__"]["tokenizer.json"] = stored
    out.write_bytes(rewrite_header(out.read_bytes(), replace))
    assert_one_line_error(out, "embedded file 'tokenizer.json'", message)


def test_a_broken_embedded_tokenizer_names_the_compact_file(source, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(source, src)
    (src / "tokenizer.json").write_text('{"not": "a tokenizer"}')
    out = tmp_path / "bad-tokenizer.tx"
    convert(src, out, bits=8, group_size=128, show_progress=False)
    model = tinyexaone.load(out)  # the tokenizer is read on first use
    with pytest.raises(TinyExaoneError) as info:
        model.tokenizer
    assert f"{out} (embedded files)" in str(info.value) and "tinyexaone-tokenizer-" not in str(info.value)


# --- damaged and hostile files -------------------------------------------------------------------------------


def test_a_newer_format_version_is_a_clear_error(compact, damaged):
    def bump(header):
        header["__metadata__"]["format_version"] = "5"
    assert_one_line_error(damaged(rewrite_header(compact.read_bytes(), bump)), "version 5", "newer", "upgrade")


@pytest.mark.parametrize("cut", ["empty", "prefix", "header", "first_tensor", "last_byte"])
def test_truncated_files(compact, damaged, cut):
    raw = compact.read_bytes()
    n = split(raw)[0]
    keep = {"empty": 0, "prefix": 5, "header": 8 + n // 2, "first_tensor": 8 + n + 10, "last_byte": len(raw) - 1}[cut]
    assert_one_line_error(damaged(raw[:keep]))


def test_trailing_bytes_are_rejected(compact, damaged):
    assert_one_line_error(damaged(compact.read_bytes() + b"\0" * 64), "after the last tensor")


@pytest.mark.parametrize("where", [0, 3, 7, 9, 20, 100, 1000, -200, -2])
def test_flipped_header_bytes(compact, damaged, where):
    raw = bytearray(compact.read_bytes())
    n = split(bytes(raw))[0]
    position = where if where >= 0 else 8 + n + where
    raw[position] ^= 0x5A
    assert_one_line_error(damaged(bytes(raw)))


def test_header_checksum_catches_an_edit_that_keeps_valid_json(compact, damaged):
    raw = compact.read_bytes()
    edited = raw.replace(b"1e-05", b"2e-05", 1)  # in the embedded config.json
    assert edited != raw
    assert_one_line_error(damaged(edited), "checksum")


def first_array(raw, prefix="model.layers.0.mlp.up_proj."):
    header = split(raw)[1]
    return next(name for name in header if name.startswith(prefix) and name.endswith("scales"))


def test_offsets_outside_the_file(compact, damaged):
    raw = compact.read_bytes()
    name = first_array(raw)

    def move(header):
        begin, end = header[name]["data_offsets"]
        header[name]["data_offsets"] = [begin + 10**9, end + 10**9]
    assert_one_line_error(damaged(rewrite_header(raw, move)), name, "outside the file")


@pytest.mark.parametrize("change", ["transposed_shape", "shape_and_offsets", "dtype", "record_shape"])
def test_wrong_shapes_and_dtypes(compact, damaged, change):
    raw = compact.read_bytes()
    name = first_array(raw)

    def edit(header):
        entry = header[name]
        if change == "transposed_shape":  # same byte size, wrong layout
            entry["shape"] = entry["shape"][::-1]
        elif change == "shape_and_offsets":  # a shape that does not match its byte range
            entry["shape"] = [entry["shape"][0], entry["shape"][1] + 1]
        elif change == "dtype":  # same item size, wrong type
            entry["dtype"] = "I16"
        else:
            edit_metadata_json("quantization", lambda q: q["tensors"]["model.layers.0.mlp.up_proj.weight"]
                               .__setitem__("shape", [256, 64]))(header)
    assert_one_line_error(damaged(rewrite_header(raw, edit)))


@pytest.mark.parametrize("change", ["misaligned", "overlap", "unknown_dtype", "list_dtype", "list_scheme",
                                    "missing_tensor", "array_used_twice",
                                    "unused_tensor", "bad_sizes_record", "bad_config", "not_compact"])
def test_other_inconsistent_headers(compact, damaged, change):
    raw = compact.read_bytes()
    name = first_array(raw)
    fragment = {"misaligned": "aligned", "overlap": "overlaps", "unknown_dtype": "dtype", "list_dtype": "dtype",
                "list_scheme": "scheme",
                "missing_tensor": "missing", "array_used_twice": "used twice", "unused_tensor": "not part of the model",
                "bad_sizes_record": "integrity", "bad_config": "config", "not_compact": "not a tinyexaone compact"}[change]
    quantization = lambda edit: edit_metadata_json("quantization", edit)  # noqa: E731

    def edit(header):
        if change == "misaligned":
            header[name]["data_offsets"] = [o - 8 for o in header[name]["data_offsets"]]
        elif change == "overlap":  # a tensor of the same size pointing at the same bytes
            header[first_array(raw, "model.layers.1.mlp.up_proj.")]["data_offsets"] = header[name]["data_offsets"]
        elif change == "unknown_dtype":
            header[name]["dtype"] = "Q4"
        elif change == "list_dtype":  # unhashable JSON values must not reach a dict lookup
            header[name]["dtype"] = []
        elif change == "list_scheme":
            quantization(lambda q: q["tensors"]["model.layers.0.mlp.up_proj.weight"].update(scheme={}))(header)
        elif change == "missing_tensor":
            quantization(lambda q: q["tensors"].pop("model.layers.1.self_attn.k_norm.weight"))(header)
        elif change == "array_used_twice":
            quantization(lambda q: q["tensors"]["model.layers.1.self_attn.k_norm.weight"]["arrays"].update(
                weight="model.layers.1.self_attn.q_norm.weight"))(header)
        elif change == "unused_tensor":
            quantization(lambda q: q["tensors"]["model.layers.0.mlp.up_proj.weight"]["arrays"].pop("scales"))(header)
        elif change == "bad_sizes_record":
            edit_metadata_json("integrity", lambda i: i["tensors"][name].update(nbytes=1))(header)
        elif change == "bad_config":
            edit_metadata_json("config.json", lambda c: c.update(model_type="llama"))(header)
        else:
            header["__metadata__"]["format"] = "pt"
    assert_one_line_error(damaged(rewrite_header(raw, edit)), fragment)


def test_padding_entries_fill_the_gaps(compact):
    header = split(compact.read_bytes())[1]
    padding = [entry for name, entry in header.items() if name.startswith("__padding__.")]
    assert padding, "the tiny model's 300-row embedding scales should need padding"
    assert all(e["dtype"] == "U8" and 0 < e["shape"][0] < 64 for e in padding)


def test_hostile_names_cannot_break_the_error_line(compact, damaged):
    raw = compact.read_bytes()
    name = first_array(raw)

    def rename(header):
        header["evil\n\x1b[2Jname"] = dict(header.pop(name), dtype="Q4")
    with pytest.raises(TinyExaoneError) as info:
        tinyexaone.load(damaged(rewrite_header(raw, rename)))
    assert "\n" not in str(info.value) and "\x1b" not in str(info.value) and "evil" in str(info.value)


def test_other_files_are_not_compact_files(source, damaged):
    assert_one_line_error(source / "model.safetensors", "not a tinyexaone compact file")
    assert_one_line_error(damaged(b"GGUF" + bytes(100)))
    assert_one_line_error(damaged(struct.pack("<Q", 2**63) + b"{}"))


def test_flipped_data_byte_is_found_by_verify(compact, damaged):
    raw = bytearray(compact.read_bytes())
    model = open_compact(compact)
    name = "model.layers.1.mlp.down_proj.nibbles"
    raw[model.entries[name].start + 77] ^= 0x01
    path = damaged(bytes(raw))
    assert verify_data(open_compact(compact)) == json.loads(model.metadata["integrity"])["data_sha256"]
    tinyexaone.load(path)  # loading does not read the data: still opens
    with pytest.raises(TinyExaoneError, match=f"'{name}' is damaged"):
        verify_data(open_compact(path))


# --- info ----------------------------------------------------------------------------------------------------


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_info_describes_compact_files_and_directories(compact, source, capsys):
    code, out, _ = run_cli(capsys, "info", compact, "--verify")
    assert code == 0
    assert "format version 2" in out and "int4 g32" in out and "embedding int8 g128" in out
    assert f"{compact.stat().st_size:,} bytes" in out and "24 model tensors" in out
    assert "hidden 128" in out and "matches" in out
    code, out, _ = run_cli(capsys, "info", source)
    assert code == 0 and "Hugging Face directory" in out and "hidden 128" in out


def test_info_lists_the_layer_kinds_of_a_mixed_file(source, tmp_path, capsys):
    out = tmp_path / "mixed.tx"
    convert(source, out, bits=4, group_size=32, mixed=True, show_progress=False)
    compact = open_compact(out)
    kinds = [compact.quantization["tensors"][name]["scheme"] for name, spec in model_tensors(compact.config).items()
             if spec.layer is not None and spec.is_matrix]
    code, text, _ = run_cli(capsys, "info", out)
    assert code == 0
    line = next(line for line in text.splitlines() if line.startswith("quantized"))
    for kind in set(kinds):
        assert f"{kinds.count(kind)} {kind} g32" in line, line
    assert "layers mixed (" in line and len(set(kinds)) > 1


def test_info_verify_on_damaged_data_is_one_line(compact, damaged, capsys):
    raw = bytearray(compact.read_bytes())
    raw[-3] ^= 0xFF
    code, out, err = run_cli(capsys, "info", damaged(bytes(raw)), "--verify")
    assert code == 2 and err.count("\n") == 1 and "damaged" in err


# --- fuzzing -------------------------------------------------------------------------------------------------

mutation = st.one_of(
    *BYTE_MUTATIONS,
    st.tuples(st.just("reseal_value"), st.integers(0, 10**6), st.sampled_from(
        ["-1", "0", "1", "63", "64", "1e999", "[]", "{}", "null", '"U8"', '"F32"', '"I8"', "[0,99999999999999999999]",
         "[[[[[[[[", "18446744073709551617", "true", '"x"'])),
)


def apply(raw: bytes, kind: str, where: int, value) -> bytes:
    mutated = mutate_bytes(raw, kind, where, value)
    if mutated is not None:
        return mutated
    if not header_intact(raw):
        return raw
    n = header_length(raw)
    # a hostile edit: replace one JSON value of the tensor table by another token and re-seal
    header = raw[8 : 8 + n]
    table = header.find(b'"},"', max(header.find(b'"integrity"'), 0))  # end of __metadata__
    spots = [i for i in range(table, len(header)) if header[i : i + 1] in (b"[", b'"') or header[i : i + 1].isdigit()]
    if not spots or raw.count(CHECKSUM_MARK) != 1:
        return raw
    i = spots[where % len(spots)]
    j = i + 1
    while j < len(header) and header[j : j + 1] not in (b",", b"}", b"]"):
        j += 1
    new = header[:i] + value.encode() + header[j:]
    new = new[:n] if len(new) >= n else new + b" " * (n - len(new))
    return seal(raw[:8] + new) + raw[8 + n :]


def run_fuzz(compact, tmp_path_factory, examples: int):
    raw = compact.read_bytes()
    path = tmp_path_factory.mktemp("fuzz") / "fuzzed.tx"

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(st.lists(mutation, min_size=1, max_size=3))
    def fuzz(mutations):
        mutated = raw
        for kind, where, value in mutations:
            if not mutated:
                break
            mutated = apply(mutated, kind, where, value)
        path.write_bytes(mutated)
        try:
            model = tinyexaone.load(path)
        except TinyExaoneError as exc:
            assert "\n" not in str(exc)
            return
        logits = model.forward([1, 2, 3])
        assert logits.shape == (3, TINY["vocab_size"])

    with np.errstate(all="ignore"):  # flipped data bytes may give NaN/inf scales: fine, not a crash
        fuzz()


JSON_VALUES = [None, True, -1, 0, 1, 32, 32.0, 64, 1e308, "", "int4", "int8", "float32", "F16", "U8", [], [1], [256, 128],
               {}, {"weight": "model.norm.weight"}, 10**20]


def run_structured_fuzz(compact, tmp_path_factory, examples: int):
    """Hostile but well-formed, checksummed headers: one field of a tensor entry, of the
    quantization record or of the integrity record replaced by another JSON value."""
    raw = compact.read_bytes()
    header = split(raw)[1]
    quant_names = sorted(json.loads(header["__metadata__"]["quantization"])["tensors"])
    entry_names = sorted(name for name in header if name != "__metadata__")
    path = tmp_path_factory.mktemp("structured") / "fuzzed.tx"

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(st.sampled_from(["entry", "quantization", "integrity"]), st.integers(0, 10**6),
           st.sampled_from(["dtype", "shape", "data_offsets", "scheme", "group_size", "arrays", "nbytes", "crc32"]),
           st.sampled_from(JSON_VALUES))
    def fuzz(where, index, key, value):
        def edit(h):
            if where == "entry":
                h[entry_names[index % len(entry_names)]][key] = value
            elif where == "quantization":
                edit_metadata_json("quantization", lambda q: q["tensors"][quant_names[index % len(quant_names)]]
                                   .__setitem__(key, value))(h)
            else:
                edit_metadata_json("integrity", lambda i: i["tensors"][sorted(i["tensors"])[index % len(i["tensors"])]]
                                   .__setitem__(key, value))(h)
        path.write_bytes(rewrite_header(raw, edit))
        try:
            model = tinyexaone.load(path)
        except TinyExaoneError as exc:
            assert "\n" not in str(exc)
            return
        assert model.forward([1, 2, 3]).shape == (3, TINY["vocab_size"])

    fuzz()


def test_structured_fuzz_compact_header_reduced(compact, tmp_path_factory):
    run_structured_fuzz(compact, tmp_path_factory, examples=100)


@pytest.mark.slow
def test_structured_fuzz_compact_header_full(compact, tmp_path_factory):
    run_structured_fuzz(compact, tmp_path_factory, examples=2000)


def test_fuzz_compact_file_reduced(compact, tmp_path_factory):
    run_fuzz(compact, tmp_path_factory, examples=250)


@pytest.mark.slow
def test_fuzz_compact_file_full(compact, tmp_path_factory):
    run_fuzz(compact, tmp_path_factory, examples=2000)


def test_header_key_order_carries_no_meaning(compact, tmp_path):
    """__metadata__ last instead of first: the same file for the loader and for the CLI."""
    def metadata_last(header):
        metadata = header.pop("__metadata__")
        header["__metadata__"] = metadata
    path = tmp_path / "reordered.tx"
    path.write_bytes(rewrite_header(compact.read_bytes(), metadata_last))
    assert not path.read_bytes()[8:].lstrip().startswith(b'{"__metadata__"')
    ids = [1, 2, 3]
    np.testing.assert_array_equal(tinyexaone.load(path).forward(ids), tinyexaone.load(compact).forward(ids))
    with pytest.raises(SystemExit) as exit_info:
        main(["info", str(path)])
    assert exit_info.value.code == 0


def test_a_version_1_file_loads_and_computes_what_its_version_2_twin_does():
    """tests/fixtures/exaone4-demo-int4-v1.tx was written by the version 1 writer from the demo
    model, with the options of models/exaone4-demo/exaone4-demo-int4.tx: the same codes in the
    old per-row layout, repacked at load, so the logits are identical."""
    fixtures, demo = Path(__file__).parent / "fixtures", Path(__file__).parent.parent / "models" / "exaone4-demo"
    old, new = tinyexaone.load(fixtures / "exaone4-demo-int4-v1.tx"), tinyexaone.load(demo / "exaone4-demo-int4.tx")
    assert (open_compact(fixtures / "exaone4-demo-int4-v1.tx").format_version, open_compact(demo / "exaone4-demo-int4.tx").format_version) == (1, 2)
    ids = np.random.default_rng(5).integers(0, old.config.vocab_size, 40)
    np.testing.assert_array_equal(old.forward(ids), new.forward(ids))

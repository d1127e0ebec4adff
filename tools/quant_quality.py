"""How far quantized files drift from their float checkpoint: output KL, top-1 agreement, weight error.

    python tools/quant_quality.py compare FLOAT_DIR FILE [FILE ...] [--positions N] [--rows N] [--no-kl]
                                          [--show NAME ...]
    python tools/quant_quality.py heavy OUT_DIR --like HF_DIR [--shape small|1.2b] [--df 4]
                                        [--outlier-scale 8] [--embedding-outliers 1] [--logit-std 4.5] [--seed 0]
    python tools/quant_quality.py text OUT.txt [--seed N] [--count N]
    python tools/quant_quality.py jitter SRC_DIR OUT_DIR [--seed N] [--scale 0.001]

`compare` loads FLOAT_DIR (a Hugging Face directory) with tinyexaone's float path and, for each
FILE, builds the same model from that file's weights: a tinyexaone compact file (.tx) twice, once
through the runtime's integer kernels as `tinyexaone.load` runs it ("kernels"), once dequantized
into the float path ("weights"); a llama.cpp GGUF (any type gguf-py can dequantize, e.g. Q4_0,
Q4_K_M) dequantized with gguf-py's `gguf.quants` into the float path. Over a fixed text (the demo
model's held-out conversations, seed 777, `--positions` tokens in windows of 256) it prints the
mean KL(float || quantized) of the next-token distributions and the top-1 agreement, each file's
size and relative weight error ||W - Q(W)||_F / ||W||_F per kind of matrix (the mean over layers)
and over all layer matrices together (`--rows N`: the first N rows of each matrix only, for big
checkpoints), then the matrices named by `--show` one by one, and each file's storage types.
One file's float copy is held at a time (5 GB at the 1.2B shape).

`heavy` writes a float32 checkpoint with HF_DIR's config fields and tokenizer files, tied, all
layers global, of a shape llama.cpp's K-quants accept (rows that are multiples of 256): `small`
(4 layers, hidden 512, MLP 1536, 8 query and 2 KV heads of 64) or `1.2b` (EXAONE-4.0-1.2B's).
Every matrix is Student-t with `--df` degrees of freedom scaled to standard deviation 0.02, with
8 random input columns per layer matrix multiplied by `--outlier-scale` (by
`--embedding-outliers` in the embedding); the norms are 1 but the final one, set so that the
logits have a standard deviation of about `--logit-std`. It streams, so the 1.2B shape (5.1 GB)
needs little memory.

`text` writes conversations of the demo model's corpus generator (a seed other than the held-out
set's) to a file, for `tinyexaone quantize --calibration`.

`jitter` writes a re-draw of SRC_DIR's rounding: the same checkpoint (config and tokenizer files
copied, float32, one model.safetensors) with every matrix multiplied element-wise by
1 + scale * N(0, 1) (numpy.random.default_rng(seed)), the norms as they are. Quantizing it and
comparing against it measures how much of a file's drift is the luck of its rounding: at
`--scale 0.001` the weights move by 0.1%, far less than 4-bit rounding's 7-9%, but a few percent of
the codes change.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WINDOW = 256  # tokens per forward pass of the text set
EVAL_SEED = 777  # the demo model's held-out seed (models/exaone4-demo/evaluate.py)
MATRIX_KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json")


def _corpus():
    spec = importlib.util.spec_from_file_location("corpus", ROOT / "models" / "exaone4-demo" / "corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def corpus_text(seed: int, count: int) -> str:
    """`count` conversations of the demo corpus generator, rendered with the chat template."""
    corpus = _corpus()
    return "".join(corpus.render_item(item) for item in corpus.conversations(count, seed))


def text_windows(tokenizer, positions: int) -> list[np.ndarray]:
    """Token windows of WINDOW ids covering `positions` ids of the held-out text."""
    count, ids = 64, []
    while len(ids) < positions + 1:
        ids = tokenizer.encode(corpus_text(EVAL_SEED, count), add_special_tokens=False)
        count *= 2
    ids = np.asarray(ids[:positions], np.int64)
    return [ids[i : i + WINDOW] for i in range(0, positions, WINDOW)]


# --- weights ----------------------------------------------------------------------------------------------


def float_model(directory: Path):
    import tinyexaone

    return tinyexaone.load(directory)


def _with_matrices(model, matrices: dict[str, np.ndarray]):
    """A Model with model's config and norms and DenseWeight matrices from `matrices` (HF names)."""
    from tinyexaone.model import Model
    from tinyexaone.tensors import model_tensors
    from tinyexaone.weights import DenseWeight, LayerWeights, ModelWeights

    old = model.weights
    layers = []
    specs = model_tensors(model.config)
    by_layer: dict[int, dict] = {}
    top = {}
    for name, spec in specs.items():
        value = DenseWeight(np.ascontiguousarray(matrices[name], np.float32)) if spec.is_matrix else None
        if spec.layer is None:
            top[spec.field] = value if spec.is_matrix else getattr(old, spec.field)
        else:
            by_layer.setdefault(spec.layer, {})[spec.field] = (
                value if spec.is_matrix else getattr(old.layers[spec.layer], spec.field))
    for i in range(len(old.layers)):
        layers.append(LayerWeights(**by_layer[i]))
    head = top.get("lm_head", top["embed_tokens"])
    return Model(model.config, ModelWeights(top["embed_tokens"], layers, top["norm"], head))


def compact_matrices(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str], object]:
    """Dequantized matrices, their schemes ("int4 g32"), and the kernel model of a compact file."""
    import tinyexaone
    from tinyexaone.compact import open_compact

    model = tinyexaone.load(path).model
    record = open_compact(path).quantization["tensors"]
    from tinyexaone.tensors import model_tensors

    matrices, types = {}, {}
    for name, spec in model_tensors(model.config).items():
        if not spec.is_matrix:
            continue
        weight = getattr(model.weights if spec.layer is None else model.weights.layers[spec.layer], spec.field)
        matrices[name] = weight.dequantize()
        types[name] = f"{record[name]['scheme']} g{record[name]['group_size']}"
    return matrices, types, model


def gguf_matrices(path: Path, config) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The matrices of a llama.cpp GGUF dequantized with gguf-py, by Hugging Face name, and their types."""
    import gguf

    from tinyexaone.tensors import model_tensors

    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: t for t in reader.tensors}
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.EXAONE4, config.num_hidden_layers)
    matrices, types = {}, {}
    for name, spec in model_tensors(config).items():
        if not spec.is_matrix:
            continue
        gguf_name = names.get_name(name, try_suffixes=(".weight",))
        if gguf_name not in tensors:
            sys.exit(f"error: {path}: no tensor {gguf_name} for {name}")
        tensor = tensors[gguf_name]
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        matrices[name] = values.reshape(spec.shape)  # GGUF lists dims innermost first: [in, out] -> [out, in]
        types[name] = tensor.tensor_type.name
    return matrices, types


# --- measures ---------------------------------------------------------------------------------------------


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def drift(reference: list[np.ndarray], model, windows) -> tuple[float, float]:
    """(mean KL(reference || model), top-1 agreement) over the windows' positions."""
    kls, agree = [], []
    for ref_logp, ids in zip(reference, windows):
        logp = log_softmax(model.forward(ids))
        kls.append((np.exp(ref_logp) * (ref_logp - logp)).sum(axis=-1))
        agree.append(ref_logp.argmax(axis=-1) == logp.argmax(axis=-1))
    return float(np.concatenate(kls).mean()), float(np.concatenate(agree).mean())


def squared_error(reference: np.ndarray, approx: np.ndarray, rows: int | None) -> tuple[float, float]:
    """(||W - Q(W)||^2, ||W||^2) over the first `rows` rows (all when None)."""
    ref = np.asarray(reference[:rows], np.float64)
    diff = np.asarray(approx[:rows], np.float64) - ref
    return float((diff * diff).sum()), float((ref * ref).sum())



def _kind(name: str) -> str:
    for kind in MATRIX_KINDS:
        if f".{kind}." in name:
            return kind
    return "embedding" if "embed_tokens" in name else "lm_head"


def compare(float_dir: Path, files: list[Path], positions: int, rows: int | None, kl: bool, show: list[str]) -> None:
    from tinyexaone.tensors import model_tensors

    reference_model = float_model(float_dir)
    model = reference_model.model
    specs = model_tensors(model.config)
    checkpoint_matrices = {name: None for name, spec in specs.items() if spec.is_matrix}
    windows = text_windows(reference_model.tokenizer, positions) if kl else []
    reference = [log_softmax(model.forward(ids)) for ids in windows]
    if kl:
        print(f"text: {sum(len(w) for w in windows)} positions of the demo corpus (seed {EVAL_SEED}), "
              f"windows of {WINDOW}")
    rows_note = f"first {rows} rows" if rows else "all rows"
    print(f"| file | path | size (MB) | mean KL | top-1 | weight error ({rows_note}): "
          + " | ".join(("embedding",) + MATRIX_KINDS + ("all layer matrices",)) + " |")
    details = []
    for path in files:
        if path.suffix == ".gguf":
            matrices, types = gguf_matrices(path, model.config)
            paths = {"float": _with_matrices(model, matrices)}
        else:
            matrices, types, kernel_model = compact_matrices(path)
            paths = {"kernels": kernel_model, "weights": _with_matrices(model, matrices)}
        sums = {name: squared_error(_float_matrix(model, specs[name]), matrices[name], rows) for name in checkpoint_matrices}
        errors = {name: float(np.sqrt(error / norm)) for name, (error, norm) in sums.items()}
        by_kind = {}
        for name, error in errors.items():
            by_kind.setdefault(_kind(name), []).append(error)
        layer_sums = np.array([sums[name] for name in sums if specs[name].layer is not None])  # [matrices, 2]
        kinds = " | ".join(f"{np.mean(by_kind[k]):.4f}" for k in ("embedding",) + MATRIX_KINDS)
        kinds += f" | {np.sqrt(layer_sums[:, 0].sum() / layer_sums[:, 1].sum()):.4f}"
        for label, quantized in paths.items():
            kl_text = "%.4f | %.3f" % drift(reference, quantized, windows) if kl else "- | -"
            print(f"| {path.name} | {label} | {path.stat().st_size / 1e6:.1f} | {kl_text} | {kinds} |", flush=True)
        details.append((path.name, errors, types))
        del matrices, paths  # one file's float copy at a time (5 GB at the 1.2B shape)
        gc.collect()
    for name in show:
        print(f"{name}: " + ", ".join(f"{file} {types[name]} {errors[name]:.4f}" for file, errors, types in details))
    for file, errors, types in details:
        counts = {}
        for name in errors:
            counts[types[name]] = counts.get(types[name], 0) + 1
        print(f"{file}: " + ", ".join(f"{n} x {t}" for t, n in sorted(counts.items())))


def _float_matrix(model, spec) -> np.ndarray:
    owner = model.weights if spec.layer is None else model.weights.layers[spec.layer]
    return getattr(owner, spec.field).dequantize()


# --- synthetic heavy-tailed checkpoint --------------------------------------------------------------------

SHAPES = {  # both have rows that are multiples of 256, as llama.cpp's K-quants need
    "small": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=2, head_dim=64),
    "1.2b": dict(hidden_size=2048, intermediate_size=4096, num_hidden_layers=30, num_attention_heads=32,
                 num_key_value_heads=8, head_dim=64),
}
OUTLIER_COLUMNS = 8
WEIGHT_STD = 0.02
SLICE_ROWS = 8192
JITTER_CHUNK = 1 << 24  # elements per slice of `jitter`


def heavy_matrix(rng: np.random.Generator, shape: tuple[int, int], df: float, outlier_scale: float):
    """Row slices of Student-t(df) weights [out, in] of standard deviation 0.02 whose 8 random
    input columns are multiplied by outlier_scale."""
    columns = rng.choice(shape[1], OUTLIER_COLUMNS, replace=False)
    for first in range(0, shape[0], SLICE_ROWS):
        values = rng.standard_t(df, (min(SLICE_ROWS, shape[0] - first), shape[1])) * (WEIGHT_STD / np.sqrt(df / (df - 2)))
        values[:, columns] *= outlier_scale
        yield values.astype(np.float32)


def write_heavy(out: Path, like: Path, shape: str, df: float, outlier_scale: float, embedding_outliers: float,
                logit_std: float, seed: int) -> None:
    """A float32 checkpoint: HF_DIR's config with `shape`, heavy-tailed matrices, unit norms but the
    final one, set so that the logits have about `logit_std` standard deviation."""
    from tinyexaone.config import parse_config
    from tinyexaone.tensors import FINAL_NORM, model_tensors

    config = json.loads((like / "config.json").read_text())
    config.update(SHAPES[shape], layer_types=["full_attention"] * SHAPES[shape]["num_hidden_layers"],
                  torch_dtype="float32", tie_word_embeddings=True)
    config.pop("dtype", None)
    specs = model_tensors(parse_config(config))
    final_norm = logit_std / (WEIGHT_STD * np.sqrt(config["hidden_size"]))
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for name in TOKENIZER_FILES:
        if (like / name).is_file():
            shutil.copyfile(like / name, out / name)
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, spec in specs.items():
        nbytes = 4 * int(np.prod(spec.shape))
        header[name] = {"dtype": "F32", "shape": list(spec.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    rng = np.random.default_rng(seed)
    with open(out / "model.safetensors", "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for name, spec in specs.items():
            if not spec.is_matrix:
                f.write(np.full(spec.shape, final_norm if name == FINAL_NORM else 1.0, np.float32).tobytes())
                continue
            scale = embedding_outliers if spec.layer is None else outlier_scale
            for part in heavy_matrix(rng, spec.shape, df, scale):
                f.write(part.tobytes())
    print(f"wrote {out}: {shape} shape, Student-t df {df}, {OUTLIER_COLUMNS} input columns x {outlier_scale} per layer"
          f" matrix (x {embedding_outliers} in the embedding), final norm {final_norm:.3f}, seed {seed}")


def write_jittered(src: Path, out: Path, seed: int, scale: float) -> None:
    """OUT: SRC's checkpoint with every matrix x (1 + scale N(0, 1)), float32 (module doc)."""
    from tinyexaone.checkpoint import open_checkpoint
    from tinyexaone.config import load_config
    from tinyexaone.safetensors_file import DTYPES, widen_bf16
    from tinyexaone.tensors import model_tensors

    specs = model_tensors(load_config(src))
    entries = open_checkpoint(src).entries
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json",) + TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, out / name)
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name in specs:
        nbytes = 4 * int(np.prod(entries[name].shape))
        header[name] = {"dtype": "F32", "shape": list(entries[name].shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    rng = np.random.default_rng(seed)
    with open(out / "model.safetensors", "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for name, spec in specs.items():
            entry = entries[name]
            storage = DTYPES[entry.dtype]
            raw = np.memmap(entry.file, dtype=storage, mode="r", offset=entry.start, shape=(entry.nbytes // storage.itemsize,))
            for first in range(0, raw.size, JITTER_CHUNK):  # streamed: the 1.2B shape needs little memory
                part = np.array(raw[first:first + JITTER_CHUNK])
                values = widen_bf16(part) if entry.dtype == "BF16" else part.astype(np.float32)
                if spec.is_matrix:
                    values *= 1 + np.float32(scale) * rng.standard_normal(values.size, np.float32)
                f.write(values.tobytes())
    print(f"wrote {out}: {src.name}'s matrices x (1 + {scale} N(0, 1)), seed {seed}")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    c = commands.add_parser("compare")
    c.add_argument("float_dir", type=Path)
    c.add_argument("files", type=Path, nargs="+")
    c.add_argument("--positions", type=int, default=1024)
    c.add_argument("--rows", type=int, default=None)
    c.add_argument("--no-kl", action="store_true")
    c.add_argument("--show", nargs="*", default=[], help="matrices (HF names) to list one by one")
    h = commands.add_parser("heavy")
    h.add_argument("out_dir", type=Path)
    h.add_argument("--like", type=Path, required=True)
    h.add_argument("--shape", choices=sorted(SHAPES), default="small")
    h.add_argument("--df", type=float, default=4.0)
    h.add_argument("--outlier-scale", type=float, default=8.0)
    h.add_argument("--embedding-outliers", type=float, default=1.0)
    h.add_argument("--logit-std", type=float, default=4.5)
    h.add_argument("--seed", type=int, default=0)
    t = commands.add_parser("text")
    t.add_argument("out", type=Path)
    t.add_argument("--seed", type=int, default=20260101)
    t.add_argument("--count", type=int, default=200)
    j = commands.add_parser("jitter")
    j.add_argument("src_dir", type=Path)
    j.add_argument("out_dir", type=Path)
    j.add_argument("--seed", type=int, default=1)
    j.add_argument("--scale", type=float, default=1e-3)
    args = parser.parse_args(argv)
    if args.command == "compare":
        compare(args.float_dir, args.files, args.positions, args.rows, not args.no_kl, args.show)
    elif args.command == "heavy":
        write_heavy(args.out_dir, args.like, args.shape, args.df, args.outlier_scale, args.embedding_outliers,
                    args.logit_std, args.seed)
    elif args.command == "jitter":
        write_jittered(args.src_dir, args.out_dir, args.seed, args.scale)
    else:
        args.out.write_text(corpus_text(args.seed, args.count), encoding="utf-8")
        print(f"wrote {args.out}: {args.count} conversations of the demo corpus, seed {args.seed}")


if __name__ == "__main__":
    main(sys.argv[1:])

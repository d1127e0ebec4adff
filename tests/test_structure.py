"""The tree's structure, checked from its source: no import cycles (none hidden behind a local
import either), every tensor name in the one table, every weight class on the `MatrixWeight`
protocol, and a model load that reads the compact header once."""

import ast
import re
from pathlib import Path

import numpy as np
import pytest

import tinyexaone
from tinyexaone import safetensors_file
from tinyexaone.bf16 import Bf16Weight
from tinyexaone.quant.convert import convert
from tinyexaone.quantized import quantize
from tinyexaone.weights import DenseWeight, MatrixWeight

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"tinyexaone": ROOT / "tinyexaone", "tinyexaone.cli": ROOT / "cli", "tinyexaone.quant": ROOT / "quant"}
SOURCE_DIRS = [ROOT / "tinyexaone", ROOT / "cli", ROOT / "quant", ROOT / "tools"]
TENSOR_NAME = re.compile(r"\bmodel\.(?:embed_tokens|norm|layers)\b|\blm_head\.weight|\b(?:self_attn|mlp)\.\w|"
                         r"(?:layernorm|_norm|_proj)\.weight")


def package_modules() -> dict[str, Path]:
    modules = {}
    for package, folder in PACKAGES.items():
        for path in folder.glob("*.py"):
            modules[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return modules


def imports_of(name: str, path: Path, modules) -> tuple[set[str], set[str]]:
    """(modules of the package imported at module level, those imported inside functions)."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    top, local = set(), set()

    def targets(node) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        base = node.module or ""
        if node.level:
            parts = package.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
        found = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
        return found or [base]

    def visit(node, inside_function: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                (local if inside_function else top).update(t for t in targets(child) if t in modules)
            visit(child, inside_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return top, local


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (module -> modules it imports) as a path, or None."""
    state, stack = {}, []

    def walk(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := walk(node)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_even_through_local_imports():
    modules = package_modules()
    assert {"tinyexaone.model", "tinyexaone.loading", "tinyexaone.cli.chat", "tinyexaone.quant.convert"} <= set(modules)
    top, every = {}, {}
    for name, path in modules.items():
        module_level, local = imports_of(name, path, modules)
        top[name], every[name] = module_level, module_level | local
    assert find_cycle(top) is None, find_cycle(top)
    # a local import that would close a cycle is one hidden by that import
    assert find_cycle(every) is None, find_cycle(every)
    # the forward pass knows nothing of tokenizers, files or generation
    assert not top["tinyexaone.model"] & {"tinyexaone.tokenizer", "tinyexaone.compact", "tinyexaone.generation",
                                          "tinyexaone.chat", "tinyexaone.loading"}
    assert not every["tinyexaone.compact"] & {"tinyexaone.model", "tinyexaone.quantized", "tinyexaone.tokenizer"}


def string_constants(path: Path):
    """(line, text) of every string constant of a module that is not a docstring."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_tensor_names_are_spelled_in_one_table_only():
    table = ROOT / "tinyexaone" / "tensors.py"
    assert any(TENSOR_NAME.search(text) for _, text in string_constants(table))
    spelled = [f"{path.relative_to(ROOT)}:{line}: {text}" for folder in SOURCE_DIRS for path in folder.rglob("*.py")
               if path != table for line, text in string_constants(path) if TENSOR_NAME.search(text)]
    assert spelled == []


def test_every_weight_class_is_a_matrix_weight():
    rng = np.random.default_rng(7)
    matrix = rng.standard_normal((48, 64)).astype(np.float32)  # [out, in]
    bits = (matrix.view(np.uint32) >> 16).astype(np.uint16)
    x = rng.standard_normal((3, 64)).astype(np.float32)  # [T, in]
    for weight in [DenseWeight(matrix), Bf16Weight(bits), quantize(matrix, 8, 32), quantize(matrix, 4, 64)]:
        assert isinstance(weight, MatrixWeight), type(weight).__name__
        dense = weight.dequantize()  # [out, in]
        assert weight.shape == (48, 64) and dense.shape == (48, 64) and dense.dtype == np.float32
        assert weight.nbytes > 0
        expected = x @ dense.T  # [T, out]; quantized weights also round x to int8 per block, hence 2%
        assert np.abs(weight.matmul(x) - expected).max() <= 0.02 * np.abs(expected).max()
        np.testing.assert_array_equal(weight.rows(np.array([5, 0])), dense[[5, 0]])
    with pytest.raises(tinyexaone.TinyExaoneError):
        Bf16Weight(bits.astype(np.int32))


def test_a_load_reads_the_compact_header_once(tmp_path, monkeypatch):
    demo = ROOT / "models" / "exaone4-demo"
    out = tmp_path / "demo.tx"
    convert(demo, out, bits=8, group_size=32, show_progress=False)
    reads = []
    original = safetensors_file.read_header
    monkeypatch.setattr(safetensors_file, "read_header", lambda *a, **k: reads.append(a[0]) or original(*a, **k))
    monkeypatch.setattr(tinyexaone.compact, "read_header", safetensors_file.read_header)
    model = tinyexaone.load(out)
    assert model.tokenizer.encode("hello") and model.tokenizer.chat_template_source
    assert reads == [out]

"""Every integer dot-product path of integer_dot.py compiles for its own CPU, and its assembly
holds the instructions it exists for (the paths this machine runs are tested on data in
test_kernels.py; this covers the others, AArch64's sdot included, without such a CPU).

Each case builds one block's integer sum (integer_dot's own IR builders: `_operand_pairs`, the
path's block sum) into a small stand-alone LLVM function, compiles it with
llvmlite for the path's target triple and CPU features, and reads the assembly."""

import llvmlite.binding as llvm
import pytest
from llvmlite import ir

from tinyexaone import integer_dot as dot

TARGETS = {  # path: (triple, cpu, features, instructions the assembly must hold)
    "vnni": ("x86_64-unknown-linux-gnu", "znver4", "", ["vpdpbusd"]),
    "avx2": ("x86_64-unknown-linux-gnu", "haswell", "", ["vpmaddubsw", "vpmaddwd"]),
    "dotprod": ("aarch64-unknown-linux-gnu", "generic", "+neon,+dotprod", ["sdot"]),
    "generic": ("aarch64-unknown-linux-gnu", "generic", "+neon", ["mul"]),
}


def block_function(path: str, bits: int, half: bool = False) -> str:
    """LLVM IR of `void block(i8* weights, i32* x, i32* out)`: out[0..7] = one block's lane sums
    (`half`: int6k's signed sum of the first half block)."""
    module = ir.Module(name=f"block_{path}_{bits}")
    function = ir.Function(module, ir.FunctionType(ir.VoidType(), [dot.I8.as_pointer(), dot.I32.as_pointer(),
                                                                   dot.I32.as_pointer()]), name="block")
    weights, x, out = function.args
    builder = ir.IRBuilder(function.append_basic_block())
    chunk_pointer = builder.bitcast(weights, dot.BYTES.as_pointer())
    n_chunks = dot.CHUNKS[bits]
    chunks = [builder.load(builder.gep(chunk_pointer, [ir.Constant(dot.I32, c)]), align=1) for c in range(n_chunks)]

    def activation(c):
        return dot._splat(builder, builder.load(builder.gep(x, [ir.Constant(dot.I32, c)]), align=1), dot.ROWS)

    pairs = dot._operand_pairs(builder, bits, chunks, activation)
    sums = dot._signed_half_sum(builder, path, pairs[:4]) if half else dot.BLOCK_SUMS[path](builder, bits, pairs)[0]
    builder.store(sums, builder.bitcast(out, dot.LANES.as_pointer()), align=4)
    builder.ret_void()
    return str(module)


def assembly(path: str, bits: int, half: bool = False) -> str:
    triple, cpu, features, _ = TARGETS[path]
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    machine = llvm.Target.from_triple(triple).create_target_machine(cpu=cpu, features=features, opt=2)
    module = llvm.parse_assembly(block_function(path, bits, half))
    module.triple = triple
    module.verify()
    return machine.emit_assembly(module)


@pytest.mark.parametrize("bits", [4, 6, 8])
@pytest.mark.parametrize("path", list(TARGETS))
def test_each_path_compiles_to_its_instructions(path, bits):
    text = assembly(path, bits).lower()
    for instruction in TARGETS[path][3]:
        assert instruction in text, f"{path} int{bits}: no {instruction} in\n{text}"


@pytest.mark.parametrize("path", list(TARGETS))
def test_int6k_half_block_sums_compile_to_their_instructions(path):
    text = assembly(path, 6, half=True).lower()
    for instruction in TARGETS[path][3] + (["vpsignb"] if path in ("vnni", "avx2") else []):
        assert instruction in text, f"{path} int6k: no {instruction} in\n{text}"


def test_only_the_dotprod_path_uses_sdot():
    assert "sdot" not in assembly("generic", 4).lower()
    assert "sdot" not in assembly("generic", 6).lower()
    assert "vpdpbusd" not in assembly("avx2", 8).lower()
    assert "vpdpbusd" not in assembly("avx2", 6).lower()

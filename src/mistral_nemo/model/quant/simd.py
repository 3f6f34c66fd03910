"""Integer dot products of 32-value blocks in LLVM vector IR, callable from numba kernels.

Weights are int8, int4 (nibbles) or int16 (widened once per row for several tokens); activations
int16 (kernels.py quantizes them per block of 32):
w16 x x16 products summed in pairs into int32 lanes, which x86 does in one instruction:

- `vnni`: `vpdpwssd` (AVX-VNNI / AVX512-VNNI), accumulating both halves of a block in one register;
- `avx2`: `vpmaddwd`, plus an add;
- `generic`: portable IR (sign-extended int32 products), for any other CPU.

numba types every integer expression as int64, so the same loop written in numba vectorises into
64-bit multiplies, slower than converting the weights to float; hence these intrinsics. Measured on
a 2-core AVX-512/VNNI Xeon, 5120 x 14336 int8 GEMV: 3.3 ms, against 13.4 ms for the float kernel.
Sums are exact: |w x| <= 128 * 32767 and 32 of them fit an int32 with room to spare.

Each call writes one int32 per block (or two, per 16-value half); eight blocks at a time are reduced
together by a transpose of pairwise adds, so no block pays a full horizontal sum.
MISTRAL_NEMO_SIMD=vnni|avx2|generic overrides the host's choice (tests/test_simd.py checks every path
the host can run; numba's cache does not see the override, so set NUMBA_CACHE_DIR to a fresh folder
with it).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from llvmlite import binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

ISAS = ("vnni", "avx2", "generic")
_I8, _I16, _I32, _I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)


def host_isa() -> str:
    """The best block-dot instruction set of this CPU (or MISTRAL_NEMO_SIMD's)."""
    forced = os.environ.get("MISTRAL_NEMO_SIMD")
    if forced:
        if forced not in ISAS:
            raise ValueError(f"MISTRAL_NEMO_SIMD={forced!r}: expected one of {', '.join(ISAS)}")
        return forced
    features = {f[1:] for f in llvm.get_host_cpu_features().flatten().split(",") if f.startswith("+")}
    if "avxvnni" in features or {"avx512vnni", "avx512vl"} <= features:
        return "vnni"
    return "avx2" if "avx2" in features else "generic"


ISA = host_isa()


def _vec(t: ir.Type, n: int) -> ir.VectorType:
    return ir.VectorType(t, n)


def _lanes(idx: range | list[int]) -> ir.Constant:
    return ir.Constant(_vec(_I32, len(idx)), list(idx))


def _call(builder: ir.IRBuilder, name: str, ret: ir.Type, args: list[ir.Value]) -> ir.Value:
    fn = builder.module.globals.get(name)
    if fn is None:
        fn = ir.Function(builder.module, ir.FunctionType(ret, [a.type for a in args]), name=name)
    return builder.call(fn, args)


def _half_partial(builder: ir.IRBuilder, w: ir.Value, x: ir.Value, acc: ir.Value | None = None) -> ir.Value:
    """<16 x i16> w, x -> <8 x i32> (plus acc): lane j = w[2j] x[2j] + w[2j+1] x[2j+1]."""
    v8i32 = _vec(_I32, 8)
    if ISA == "vnni":
        start = acc if acc is not None else ir.Constant(v8i32, None)
        args = [start, builder.bitcast(w, v8i32), builder.bitcast(x, v8i32)]
        return _call(builder, "llvm.x86.avx512.vpdpwssd.256", v8i32, args)
    if ISA == "avx2":
        pairs = _call(builder, "llvm.x86.avx2.pmadd.wd", v8i32, [w, x])
    else:
        p = builder.mul(builder.sext(w, _vec(_I32, 16)), builder.sext(x, _vec(_I32, 16)))
        pairs = _pair_sums(builder, p, p, 16)
        pairs = builder.shuffle_vector(pairs, pairs, _lanes(range(8)))
    return pairs if acc is None else builder.add(acc, pairs)


Halves = tuple[ir.Value, ir.Value]  # a block's first and last 16 values, each <16 x i16>


def _block_partial(builder: ir.IRBuilder, w: Halves, x: Halves, halves: bool) -> ir.Value:
    """A block's 32 values as (first 16, last 16) of w and x -> <8 x i32> adding up to dot(w, x);
    with halves, lanes 0-3 add up to the first half's dot and lanes 4-7 to the second's."""
    if not halves:
        return _half_partial(builder, w[1], x[1], _half_partial(builder, w[0], x[0]))
    return _pair_sums(builder, _half_partial(builder, w[0], x[0]), _half_partial(builder, w[1], x[1]))


def _pair_sums(builder: ir.IRBuilder, a: ir.Value, b: ir.Value, width: int = 8) -> ir.Value:
    """[a0+a1, a2+a3, ..., b0+b1, ...] for two vectors of `width` lanes: one level of the transpose."""
    even = builder.shuffle_vector(a, b, _lanes(range(0, 2 * width, 2)))
    odd = builder.shuffle_vector(a, b, _lanes(range(1, 2 * width, 2)))
    return builder.add(even, odd)


def _horizontal_sum(builder: ir.IRBuilder, v: ir.Value, lanes: int = 8) -> ir.Value:
    width = lanes // 2
    while width:
        lo = builder.shuffle_vector(v, v, _lanes(range(width)))
        v = builder.add(lo, builder.shuffle_vector(v, v, _lanes(range(width, 2 * width))))
        width //= 2
    return builder.extract_element(v, ir.Constant(_I32, 0))


def _unpack_nibbles(builder: ir.IRBuilder, raw: ir.Value) -> Halves:
    """16 bytes -> the block's values as int16: byte j holds value j (low nibble) and value j + 16 (high
    nibble), ggml's Q4 order."""
    lo = builder.and_(raw, ir.Constant(_vec(_I8, 16), [15] * 16))
    hi = builder.lshr(raw, ir.Constant(_vec(_I8, 16), [4] * 16))
    return builder.zext(lo, _vec(_I16, 16)), builder.zext(hi, _vec(_I16, 16))


def _counted_loop(
    builder: ir.IRBuilder, count: ir.Value, body: Callable[[ir.Value], None], name: str
) -> None:
    """for i in range(count): body(i), as basic blocks."""
    entry = builder.basic_block
    head = builder.append_basic_block(f"{name}.head")
    loop = builder.append_basic_block(f"{name}.body")
    done = builder.append_basic_block(f"{name}.done")
    builder.branch(head)
    builder.position_at_end(head)
    i = builder.phi(_I64)
    i.add_incoming(ir.Constant(_I64, 0), entry)
    builder.cbranch(builder.icmp_signed("<", i, count), loop, done)
    builder.position_at_end(loop)
    body(i)
    i.add_incoming(builder.add(i, ir.Constant(_I64, 1)), builder.basic_block)
    builder.branch(head)
    builder.position_at_end(done)


# Weight element types: int8, nibble-packed uint8 (two values a byte), or int16 (weights widened once
# for several tokens: the widening shuffles were the small-batch kernels' bottleneck).
_WEIGHT_TYPES = {"i8": (types.int8, 32), "u4": (types.uint8, 16), "i16": (types.int16, 32)}


def _block_dots_intrinsic(name: str, weights: str = "i8", halves: bool = False) -> Callable:
    """halves: two sums per block (values 0-15, 16-31), for weights with a scale per 16 (Q6_K)."""
    weight_type, elems_per_block = _WEIGHT_TYPES[weights]
    sums_per_block = 2 if halves else 1

    def codegen(context, builder, signature, args):
        w_arr, w_off, x_arr, x_off, out_arr, n_blocks = args
        w_ptr = builder.gep(context.make_array(signature.args[0])(context, builder, w_arr).data, [w_off])
        x_ptr = builder.gep(context.make_array(signature.args[2])(context, builder, x_arr).data, [x_off])
        out_ptr = context.make_array(signature.args[4])(context, builder, out_arr).data

        def load(ptr: ir.Value, at: ir.Value, elem: ir.Type, n: int) -> ir.Value:
            return builder.load(builder.bitcast(builder.gep(ptr, [at]), _vec(elem, n).as_pointer()), align=1)

        def partial(block: ir.Value) -> ir.Value:
            at = builder.mul(block, ir.Constant(_I64, elems_per_block))
            second = builder.add(at, ir.Constant(_I64, 16))
            if weights == "u4":
                w = _unpack_nibbles(builder, load(w_ptr, at, _I8, 16))
            elif weights == "i8":
                w = tuple(builder.sext(load(w_ptr, a, _I8, 16), _vec(_I16, 16)) for a in (at, second))
            else:
                w = (load(w_ptr, at, _I16, 16), load(w_ptr, second, _I16, 16))
            xat = builder.mul(block, ir.Constant(_I64, 32))
            x = (load(x_ptr, xat, _I16, 16), load(x_ptr, builder.add(xat, ir.Constant(_I64, 16)), _I16, 16))
            return _block_partial(builder, w, x, halves)

        eight = ir.Constant(_I64, 8)
        chunks = builder.sdiv(n_blocks, eight)

        def chunk(c: ir.Value) -> None:
            first = builder.mul(c, eight)
            level = [partial(builder.add(first, ir.Constant(_I64, j))) for j in range(8)]
            # After two levels each vector holds [half sums of 4 blocks]; after three, [8 block sums].
            while len(level) > sums_per_block:
                level = [_pair_sums(builder, level[j], level[j + 1]) for j in range(0, len(level), 2)]
            out_first = builder.mul(first, ir.Constant(_I64, sums_per_block))
            for j, sums in enumerate(level):
                at = builder.gep(out_ptr, [builder.add(out_first, ir.Constant(_I64, 8 * j))])
                builder.store(sums, builder.bitcast(at, _vec(_I32, 8).as_pointer()), align=4)

        _counted_loop(builder, chunks, chunk, "chunks")
        first_left = builder.mul(chunks, eight)

        def leftover(r: ir.Value) -> None:
            block = builder.add(first_left, r)
            lanes = partial(block)
            if not halves:
                builder.store(_horizontal_sum(builder, lanes), builder.gep(out_ptr, [block]))
                return
            for h in range(2):
                part = builder.shuffle_vector(lanes, lanes, _lanes(range(4 * h, 4 * h + 4)))
                at = builder.add(builder.mul(block, ir.Constant(_I64, 2)), ir.Constant(_I64, h))
                builder.store(_horizontal_sum(builder, part, 4), builder.gep(out_ptr, [at]))

        _counted_loop(builder, builder.sub(n_blocks, first_left), leftover, "left")
        return context.get_dummy_value()

    def typer(typingctx, w, w_off, x, x_off, out, n_blocks):
        expected = (weight_type, types.int16, types.int32)
        arrays = (w, x, out)
        if not all(
            isinstance(a, types.Array) and a.dtype == e for a, e in zip(arrays, expected, strict=True)
        ):
            return None  # numba reports the signature as unsupported
        return types.void(w, types.intp, x, types.intp, out, types.intp), codegen

    typer.__name__ = typer.__qualname__ = name
    return intrinsic(typer)


# i8_block_dots(w, w_off, x, x_off, out, n_blocks): out[b] = sum_k w[w_off + 32b + k] * x[x_off + 32b + k]
# for int8 w, int16 x, int32 out (1-D contiguous arrays; offsets in elements), b < n_blocks.
i8_block_dots = _block_dots_intrinsic("i8_block_dots")
# i8_half_block_dots(...): out[2b + h] = the same sum over values 16h .. 16h + 15 of block b.
i8_half_block_dots = _block_dots_intrinsic("i8_half_block_dots", halves=True)
# u4_block_dots(...): the same for nibble-packed uint8 w (16 bytes per block of 32 values 0..15,
# w_off in bytes).
u4_block_dots = _block_dots_intrinsic("u4_block_dots", weights="u4")
# i16_block_dots / i16_half_block_dots(...): the same for int16 w.
i16_block_dots = _block_dots_intrinsic("i16_block_dots", weights="i16")
i16_half_block_dots = _block_dots_intrinsic("i16_half_block_dots", weights="i16", halves=True)


def _u4_widen_codegen(context, builder, signature, args):
    w_arr, w_off, out_arr, n_blocks = args
    w_ptr = builder.gep(context.make_array(signature.args[0])(context, builder, w_arr).data, [w_off])
    out_ptr = context.make_array(signature.args[2])(context, builder, out_arr).data

    def block(b: ir.Value) -> None:
        at = builder.gep(w_ptr, [builder.mul(b, ir.Constant(_I64, 16))])
        raw = builder.load(builder.bitcast(at, _vec(_I8, 16).as_pointer()), align=1)
        for h, values in enumerate(_unpack_nibbles(builder, raw)):
            to = builder.add(builder.mul(b, ir.Constant(_I64, 32)), ir.Constant(_I64, 16 * h))
            builder.store(
                values, builder.bitcast(builder.gep(out_ptr, [to]), _vec(_I16, 16).as_pointer()), align=2
            )

    _counted_loop(builder, n_blocks, block, "widen")
    return context.get_dummy_value()


@intrinsic
def u4_widen(typingctx, w, w_off, out, n_blocks):
    """u4_widen(w, w_off, out, n_blocks): the 32 * n_blocks nibble values from byte w_off on -> int16
    out (what the small-batch kernels dot with several tokens)."""
    if not (isinstance(w, types.Array) and w.dtype == types.uint8 and isinstance(out, types.Array)):
        return None
    if out.dtype != types.int16:
        return None
    return types.void(w, types.intp, out, types.intp), _u4_widen_codegen


# ---- Token tiles: one weight row against up to TILE tokens, scaled and summed in float --------------
#
# The per-block kernels above reduce every block to one int32 sum, a transpose of shuffles per block and
# token that cost more than the multiplies once several tokens share a row (~40 GMAC/s on 2 cores).
# Here each block's 32 weights are loaded and widened once, multiplied with up to TILE tokens' blocks
# held in registers, and each token's 16 lanes of pair sums are converted to float and accumulated with
# that block's scale (weight scale x activation scale, given per token and block in `s`):
#     acc_t += float(pairs(w_b, x_t,b)) * s[t, b]     (16 lanes; even blocks in one register, odd in another)
# and the lanes are summed once per row. The order of every float operation depends only on the block
# index, never on the tile or the other tokens, so a token's result is the same bits alone or in a batch.
TILE = 8  # tokens per tile: 2 x 8 accumulators + weights + temporaries fit the 32 AVX-512 registers

_F32 = ir.FloatType()


def _host_features() -> set[str]:
    return {f[1:] for f in llvm.get_host_cpu_features().flatten().split(",") if f.startswith("+")}


# 512-bit vpdpwssd: AVX512-VNNI with AVX512-BW (not AVX-VNNI alone, whose registers are 256 bits).
WIDE = ISA == "vnni" and {"avx512vnni", "avx512bw", "avx512f"} <= _host_features()


def _pairs16(builder: ir.IRBuilder, w: ir.Value, x: ir.Value) -> ir.Value:
    """<32 x i16> w, x -> <16 x i32>, lane j = w[2j] x[2j] + w[2j+1] x[2j+1] (exact), on every ISA."""
    v16i32 = _vec(_I32, 16)
    if WIDE:
        args = [ir.Constant(v16i32, None), builder.bitcast(w, v16i32), builder.bitcast(x, v16i32)]
        return _call(builder, "llvm.x86.avx512.vpdpwssd.512", v16i32, args)
    halves = []
    for h in range(2):
        pick = _lanes(range(16 * h, 16 * h + 16))
        halves.append(
            _half_partial(builder, builder.shuffle_vector(w, w, pick), builder.shuffle_vector(x, x, pick))
        )
    return builder.shuffle_vector(halves[0], halves[1], _lanes(range(16)))


def _splat(builder: ir.IRBuilder, value: ir.Value, n: int) -> ir.Value:
    one = builder.insert_element(ir.Constant(_vec(value.type, n), None), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, one, _lanes([0] * n))


def _lane_sum(builder: ir.IRBuilder, v: ir.Value) -> ir.Value:
    """Sum of 16 float lanes in a fixed tree order (halves added lane-wise, four times)."""
    width = 8
    while width:
        lo = builder.shuffle_vector(v, v, _lanes(range(width)))
        v = builder.fadd(lo, builder.shuffle_vector(v, v, _lanes(range(width, 2 * width))))
        width //= 2
    return builder.extract_element(v, ir.Constant(_I32, 0))


def _tile_dots_intrinsic(weights: str, tile: int) -> Callable:
    weight_type, bytes_per_block = {"i8": (types.int8, 32), "u4": (types.uint8, 16)}[weights]

    def codegen(context, builder, signature, args):
        w_arr, w_off, x_arr, x_off, x_stride, s_arr, s_stride, out_arr, n_blocks = args

        def data(i: int, arr: ir.Value) -> ir.Value:
            return context.make_array(signature.args[i])(context, builder, arr).data

        w_ptr = builder.gep(data(0, w_arr), [w_off])
        x_ptr = builder.gep(data(2, x_arr), [x_off])
        s_ptr, out_ptr = data(5, s_arr), data(7, out_arr)
        v16f = _vec(_F32, 16)
        # accumulators live in allocas that LLVM promotes to registers; [parity][token]
        accs = [[cgutils.alloca_once(builder, v16f) for _ in range(tile)] for _ in range(2)]
        for row in accs:
            for a in row:
                builder.store(ir.Constant(v16f, None), a)

        def load(ptr: ir.Value, at: ir.Value, elem: ir.Type, n: int) -> ir.Value:
            return builder.load(builder.bitcast(builder.gep(ptr, [at]), _vec(elem, n).as_pointer()), align=1)

        def block(b: ir.Value, parity: int) -> None:
            at = builder.mul(b, ir.Constant(_I64, bytes_per_block))
            if weights == "i8":
                w = builder.sext(load(w_ptr, at, _I8, 32), _vec(_I16, 32))
            else:
                lo, hi = _unpack_nibbles_i8(builder, load(w_ptr, at, _I8, 16))
                w = builder.zext(builder.shuffle_vector(lo, hi, _lanes(range(32))), _vec(_I16, 32))
            xat = builder.mul(b, ir.Constant(_I64, 32))
            for t in range(tile):
                row = builder.add(xat, builder.mul(ir.Constant(_I64, t), x_stride))
                pairs = _pairs16(builder, w, load(x_ptr, row, _I16, 32))
                s_at = builder.add(b, builder.mul(ir.Constant(_I64, t), s_stride))
                s = _splat(builder, builder.load(builder.gep(s_ptr, [s_at])), 16)
                acc = accs[parity][t]
                fma = _call(builder, "llvm.fma.v16f32", v16f, [builder.sitofp(pairs, v16f), s, builder.load(acc)])
                builder.store(fma, acc)

        two = ir.Constant(_I64, 2)

        def pair(p: ir.Value) -> None:
            block(builder.mul(p, two), 0)
            block(builder.add(builder.mul(p, two), ir.Constant(_I64, 1)), 1)

        pairs_count = builder.sdiv(n_blocks, two)
        _counted_loop(builder, pairs_count, pair, "tile")
        last = builder.mul(pairs_count, two)

        def leftover(r: ir.Value) -> None:
            block(builder.add(last, r), 0)

        _counted_loop(builder, builder.sub(n_blocks, last), leftover, "tile_left")
        for t in range(tile):
            total = builder.fadd(builder.load(accs[0][t]), builder.load(accs[1][t]))
            builder.store(_lane_sum(builder, total), builder.gep(out_ptr, [ir.Constant(_I64, t)]))
        return context.get_dummy_value()

    def typer(typingctx, w, w_off, x, x_off, x_stride, s, s_stride, out, n_blocks):
        expected = (weight_type, types.int16, types.float32, types.float32)
        arrays = (w, x, s, out)
        if not all(
            isinstance(a, types.Array) and a.dtype == e and a.layout == "C"
            for a, e in zip(arrays, expected, strict=True)
        ):
            return None  # numba reports the signature as unsupported
        sig = types.void(w, types.intp, x, types.intp, types.intp, s, types.intp, out, types.intp)
        return sig, codegen

    typer.__name__ = typer.__qualname__ = f"{weights}_tile{tile}_dots"
    return intrinsic(typer)


def _unpack_nibbles_i8(builder: ir.IRBuilder, raw: ir.Value) -> tuple[ir.Value, ir.Value]:
    lo = builder.and_(raw, ir.Constant(_vec(_I8, 16), [15] * 16))
    return lo, builder.lshr(raw, ir.Constant(_vec(_I8, 16), [4] * 16))


# i8_tile_dots[n](w, w_off, x, x_off, x_stride, s, s_stride, out, n_blocks), n = 1..TILE tokens: for
# t < n, out[t] = sum_b s[t * s_stride + b] * dot(w[w_off + 32b : +32], x[x_off + t * x_stride + 32b : +32])
# in the fixed float order above (C-contiguous arrays of any rank; offsets and strides in elements).
# u4_tile_dots[n]: the same for nibble-packed weights (16 bytes a block, ggml's Q4 order; w_off in bytes).
i8_tile_dots = tuple(_tile_dots_intrinsic("i8", n) for n in range(1, TILE + 1))
u4_tile_dots = tuple(_tile_dots_intrinsic("u4", n) for n in range(1, TILE + 1))

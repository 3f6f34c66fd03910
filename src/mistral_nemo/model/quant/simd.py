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
together by a transpose of pairwise adds, so no block pays a full horizontal sum. The row groups at
the end (16 rows x up to 8 tokens, rows in the lanes) are what the int8 / int4 kernels run now; the
per-block sums serve rows left over from groups of 16 and Q6_K's half blocks.
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
if ISA != "generic":
    llvm.initialize_native_asmparser()  # for the inline assembly of _unpack_nibbles


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
    v16i16 = _vec(_I16, 16)
    wide = builder.zext(raw, v16i16)
    fifteen = ir.Constant(v16i16, [15] * 16)
    if ISA == "generic":
        return builder.and_(wide, fifteen), builder.lshr(wide, ir.Constant(v16i16, [4] * 16))
    # x86: one widening, then a 16-bit mask and shift (3 instructions). Written as IR, LLVM narrows
    # the mask and shift to bytes and widens twice (5); inline assembly keeps them on the words.
    ftype = ir.FunctionType(v16i16, [v16i16, v16i16])
    lo = builder.asm(ftype, "vpand $2, $1, $0", "=x,x,x", [wide, fifteen], side_effect=False)
    hi = builder.asm(ir.FunctionType(v16i16, [v16i16]), "vpsrlw $$4, $1, $0", "=x,x", [wide], False)
    return lo, hi


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


# ---- Row groups: 16 weight rows against up to TILE tokens ---------------------------------------------
#
# The per-block kernels above reduce every block to one int32 sum with a transpose of shuffles per block
# and token, which costs more than the multiplies once several tokens share a row (~40 GMAC/s on 2
# cores). Here the lanes of a register are 16 weight rows instead: a block of 16 rows (16 x 32 values)
# is widened and transposed once into 16 registers of (row: pair j) int16 pairs, then each token's
# block is 16 vpdpwssd with one pair of its activations broadcast, leaving each row's exact int32 block
# sum in its lane. Per token and row the float result is then the fixed chain
#     acc = 0; for b in blocks: acc = fma(float(isum_b), xs[t, b] * ws[n, b], acc)
# (an explicit fused multiply-add, one rounding: LLVM is free to fuse a separate multiply and add in
# one place and not another), which depends only on the exact integer sums: every token gets
# the same bits alone or in a batch, and kernels.row_chain computes the same chain from the per-block
# sums of the kernels above (rows left over from the groups of 16, and the tests' reference).
# One token alone (batch-1 decode) skips the transpose, which then cost more than the multiplies when
# the weights sit in cache: each row's block is multiplied on its own and the 16 rows' partial sums are
# reduced together afterwards (_one_token_sums), giving the same exact sums, hence the same bits.
TILE = 8  # tokens per call: 8 int32 + 8 float accumulators beside the 16 transposed weight registers
GROUP_ROWS = 16
CHAINS = 4  # independent vpdpwssd accumulators per token and block

_F32 = ir.FloatType()


def _host_features() -> set[str]:
    return {f[1:] for f in llvm.get_host_cpu_features().flatten().split(",") if f.startswith("+")}


# 512-bit vpdpwssd: AVX512-VNNI with AVX512-BW (not AVX-VNNI alone, whose registers are 256 bits).
WIDE = ISA == "vnni" and {"avx512vnni", "avx512bw", "avx512f"} <= _host_features()


def _dot_acc16(builder: ir.IRBuilder, acc: ir.Value, w: ir.Value, x: ir.Value) -> ir.Value:
    """acc <16 x i32> + pair sums of <32 x i16> w, x (lane j: w[2j] x[2j] + w[2j+1] x[2j+1]), any ISA."""
    v16i32 = _vec(_I32, 16)
    if WIDE:
        args = [acc, builder.bitcast(w, v16i32), builder.bitcast(x, v16i32)]
        return _call(builder, "llvm.x86.avx512.vpdpwssd.512", v16i32, args)
    halves = []
    for h in range(2):
        pick = _lanes(range(16 * h, 16 * h + 16))
        part = builder.shuffle_vector(acc, acc, _lanes(range(8 * h, 8 * h + 8)))
        wh, xh = builder.shuffle_vector(w, w, pick), builder.shuffle_vector(x, x, pick)
        halves.append(_half_partial(builder, wh, xh, part))
    return builder.shuffle_vector(halves[0], halves[1], _lanes(range(16)))


def _prefetch(builder: ir.IRBuilder, ptr: ir.Value) -> None:
    """Ask for the cache line at ptr into L2 (prefetcht1: at NeMo sizes a row group is 80 KB, and fetching
    the next one into L1 evicted the lines in use); never faults, even past an array's end."""
    args = [
        builder.bitcast(ptr, _I8.as_pointer()),
        ir.Constant(_I32, 0),
        ir.Constant(_I32, 2),
        ir.Constant(_I32, 1),
    ]
    _call(builder, "llvm.prefetch.p0", ir.VoidType(), args)


def _splat(builder: ir.IRBuilder, value: ir.Value, n: int) -> ir.Value:
    one = builder.insert_element(ir.Constant(_vec(value.type, n), None), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, one, _lanes([0] * n))


def _transpose16(builder: ir.IRBuilder, rows: list[ir.Value]) -> list[ir.Value]:
    """16 vectors of 16 lanes, rows[r][j] -> cols[j][r]: four stages, each swapping one bit of the
    vector index with the same bit of the lane index (16 two-source shuffles a stage)."""
    vs = list(rows)
    for k in range(4):
        bit = 1 << k
        keep = [m if not m & bit else 16 + m - bit for m in range(16)]
        move = [m + bit if not m & bit else 16 + m for m in range(16)]
        for v in range(16):
            if v & bit:
                continue
            a, b = vs[v], vs[v | bit]
            vs[v] = builder.shuffle_vector(a, b, _lanes(keep))
            vs[v | bit] = builder.shuffle_vector(a, b, _lanes(move))
    return vs


def rows16_intrinsic(weights: str, tile: int, transpose: bool | None = None) -> Callable:
    """The row-group kernel for "i8" / "u4" weights and `tile` tokens (i8_rows16 / u4_rows16 below).
    transpose: None transposes only for several tokens; True / False force it (bench/row_group.py)."""
    transpose = tile > 1 if transpose is None else transpose
    weight_type, bytes_per_block = {"i8": (types.int8, 32), "u4": (types.uint8, 16)}[weights]
    zeros = weights == "u4"

    # argument names in order; the typers below give their types
    params = ["w", "w_off", "w_stride", "x", "x_off", "x_stride", "xs", "xs_off", "sc", "sc_off", "n_groups"]
    params += ["zr", "gs", "gs_off"] if zeros else []
    params += ["out", "out_off", "out_stride", "n_blocks"]

    def codegen(context, builder, signature, args):
        arg = dict(zip(params, args, strict=True))
        kind = dict(zip(params, signature.args, strict=True))
        w_off, w_stride, x_stride, xs_off = arg["w_off"], arg["w_stride"], arg["x_stride"], arg["xs_off"]
        sc_off, n_groups, n_blocks = arg["sc_off"], arg["n_groups"], arg["n_blocks"]

        def data(name: str) -> ir.Value:
            return context.make_array(kind[name])(context, builder, arg[name]).data

        w_ptr = builder.gep(data("w"), [w_off])
        x_ptr = builder.gep(data("x"), [arg["x_off"]])
        xs_ptr = builder.gep(data("xs"), [xs_off])
        out_ptr = builder.gep(data("out"), [arg["out_off"]])
        v16f, v16i = _vec(_F32, 16), _vec(_I32, 16)
        accs = [cgutils.alloca_once(builder, v16f) for _ in range(tile)]
        for a in accs:
            builder.store(ir.Constant(v16f, None), a)
        per_group = builder.udiv(n_blocks, n_groups)

        def load(ptr: ir.Value, at: ir.Value, elem: ir.Type, n: int) -> ir.Value:
            return builder.load(builder.bitcast(builder.gep(ptr, [at]), _vec(elem, n).as_pointer()), align=1)

        def rows_of_column(arr: str, g: ir.Value) -> ir.Value:
            """<16 x float>: lane r = arr[sc_off + r * n_groups + g], group g of the 16 rows (scales and
            zeros stay in their [rows, groups] layout: gathering them here replaced a per-call copy
            into rows-in-lanes order that cost as much as the multiplies at SmolLM2's sizes)."""
            base = builder.gep(data(arr), [builder.add(sc_off, g)])
            vec = ir.Constant(v16f, None)
            for r in range(GROUP_ROWS):
                at = builder.gep(base, [builder.mul(ir.Constant(_I64, r), n_groups)])
                vec = builder.insert_element(vec, builder.load(at), ir.Constant(_I32, r))
            return vec

        def tile_sums(halves: list[Halves], xat: ir.Value) -> list[ir.Value]:
            """Widen and transpose the 16 rows once, then 16 multiply-adds per token."""
            cols = _transpose16(
                builder,
                [
                    builder.bitcast(builder.shuffle_vector(lo, hi, _lanes(range(32))), v16i)
                    for lo, hi in halves
                ],
            )
            isums = []
            for t in range(tile):  # token by token: the 16 columns stay in registers for every token
                row = builder.add(xat, builder.mul(ir.Constant(_I64, t), x_stride))
                # four independent chains of four (exact integers, any order): LLVM splits a long
                # vpdpwssd chain into vpmaddwd + vpaddd to shorten its latency, doubling the uops
                chains = [ir.Constant(v16i, None)] * CHAINS
                for j, col in enumerate(cols):
                    at_x = builder.add(row, ir.Constant(_I64, 2 * j))
                    pair = builder.load(
                        builder.bitcast(builder.gep(x_ptr, [at_x]), _I32.as_pointer()), align=2
                    )
                    xj = builder.bitcast(_splat(builder, pair, 16), _vec(_I16, 32))
                    wj = builder.bitcast(col, _vec(_I16, 32))
                    chains[j % CHAINS] = _dot_acc16(builder, chains[j % CHAINS], wj, xj)
                while len(chains) > 1:
                    chains = [builder.add(chains[i], chains[i + 1]) for i in range(0, len(chains), 2)]
                isums.append(chains[0])
            return isums

        # The next row group (the next 16 rows, what this thread most likely multiplies next) is fetched
        # while this one is multiplied, a block's share per block. The 16 rows are read side by side,
        # 16 streams at a row's stride, which the hardware prefetchers do not follow: without this,
        # weights not in cache streamed at a quarter of a plain read's bandwidth.
        next_rows = builder.gep(w_ptr, [builder.mul(ir.Constant(_I64, GROUP_ROWS), w_stride)])
        slice_bytes = GROUP_ROWS * bytes_per_block  # the next group's bytes per block of this one

        def block(b: ir.Value, wsv: ir.Value) -> None:
            at = builder.mul(b, ir.Constant(_I64, bytes_per_block))
            ahead = builder.gep(next_rows, [builder.mul(b, ir.Constant(_I64, slice_bytes))])
            for line in range(0, slice_bytes, 64):
                _prefetch(builder, builder.gep(ahead, [ir.Constant(_I64, line)]))
            halves = []
            for r in range(GROUP_ROWS):
                here = builder.add(at, builder.mul(ir.Constant(_I64, r), w_stride))
                if weights == "i8":
                    second = builder.add(here, ir.Constant(_I64, 16))
                    w = tuple(builder.sext(load(w_ptr, a, _I8, 16), _vec(_I16, 16)) for a in (here, second))
                else:
                    w = _unpack_nibbles(builder, load(w_ptr, here, _I8, 16))
                halves.append(w)
            xat = builder.mul(b, ir.Constant(_I64, 32))
            if not transpose:  # one token: the transpose cost more than the multiplies (_one_token_sums)
                x = (
                    load(x_ptr, xat, _I16, 16),
                    load(x_ptr, builder.add(xat, ir.Constant(_I64, 16)), _I16, 16),
                )
                isums = [_one_token_sums(builder, halves, x)]
            else:
                isums = tile_sums(halves, xat)
            for t in range(tile):
                xs_at = builder.add(b, builder.mul(ir.Constant(_I64, t), n_blocks))
                scale = builder.fmul(_splat(builder, builder.load(builder.gep(xs_ptr, [xs_at])), 16), wsv)
                fma_args = [builder.sitofp(isums[t], v16f), scale, builder.load(accs[t])]
                builder.store(_call(builder, "llvm.fma.v16f32", v16f, fma_args), accs[t])

        next_scales = builder.add(sc_off, builder.mul(ir.Constant(_I64, GROUP_ROWS), n_groups))

        def group(g: ir.Value) -> None:
            ahead = builder.add(next_scales, builder.mul(g, ir.Constant(_I64, GROUP_ROWS)))
            for arr in ("sc", "zr") if zeros else ("sc",):  # 16 floats: one line of the next group's
                _prefetch(builder, builder.gep(data(arr), [ahead]))
            wsv = rows_of_column("sc", g)
            first = builder.mul(g, per_group)
            _counted_loop(builder, per_group, lambda j: block(builder.add(first, j), wsv), "rows16.block")

        _counted_loop(builder, n_groups, group, "rows16.group")
        if zeros:  # int4's zero term after the blocks, group by group: kernels._zero_term's order

            def zero_term(g: ir.Value) -> None:
                zv = rows_of_column("zr", g)
                gs_ptr = builder.gep(data("gs"), [builder.add(arg["gs_off"], g)])
                for t in range(tile):
                    gs = builder.load(builder.gep(gs_ptr, [builder.mul(ir.Constant(_I64, t), n_groups)]))
                    fma_args = [zv, _splat(builder, gs, 16), builder.load(accs[t])]
                    builder.store(_call(builder, "llvm.fma.v16f32", v16f, fma_args), accs[t])

            _counted_loop(builder, n_groups, zero_term, "rows16.zero")
        for t in range(tile):
            at = builder.gep(out_ptr, [builder.mul(ir.Constant(_I64, t), arg["out_stride"])])
            builder.store(builder.load(accs[t]), builder.bitcast(at, v16f.as_pointer()), align=4)
        return context.get_dummy_value()

    def signature(arrays: dict[str, types.Type]) -> tuple[types.Signature, Callable] | None:
        expected = {"w": weight_type, "x": types.int16}
        if not all(
            isinstance(a, types.Array) and a.dtype == expected.get(name, types.float32) and a.layout == "C"
            for name, a in arrays.items()
        ):
            return None  # numba reports the signature as unsupported
        return types.void(*(arrays.get(name, types.intp) for name in params)), codegen

    if zeros:

        def typer(typingctx, w, w_off, w_stride, x, x_off, x_stride, xs, xs_off, sc, sc_off, n_groups,
                  zr, gs, gs_off, out, out_off, out_stride, n_blocks):  # fmt: skip
            return signature({"w": w, "x": x, "xs": xs, "sc": sc, "zr": zr, "gs": gs, "out": out})
    else:

        def typer(typingctx, w, w_off, w_stride, x, x_off, x_stride, xs, xs_off, sc, sc_off, n_groups,
                  out, out_off, out_stride, n_blocks):  # fmt: skip
            return signature({"w": w, "x": x, "xs": xs, "sc": sc, "out": out})

    typer.__name__ = typer.__qualname__ = f"{weights}_rows16_tile{tile}"
    return intrinsic(typer)


def _in_chunk_sums(builder: ir.IRBuilder, a: ir.Value, b: ir.Value, width: int) -> ir.Value:
    """Pair sums within each 128-bit chunk of two `width`-lane int32 vectors: chunk c of the result is
    [a0+a1, a2+a3, b0+b1, b2+b3] of chunk c of a and b (x86 `vphaddd`, no lane crossing)."""
    even = [i + 4 * c + w for c in range(width // 4) for w, i in ((0, 0), (0, 2), (width, 0), (width, 2))]
    even_v = builder.shuffle_vector(a, b, _lanes(even))
    odd_v = builder.shuffle_vector(a, b, _lanes([i + 1 for i in even]))
    return builder.add(even_v, odd_v)


def _chunk_pair_sums(builder: ir.IRBuilder, a: ir.Value, b: ir.Value, width: int) -> ir.Value:
    """_pair_sums over 128-bit chunks (4 lanes) instead of lanes: [a's chunks 0+1, 2+3, .., b's ..]."""
    # shuffle indices run over a's lanes then b's, so chunk k of the pair is lanes 4k .. 4k + 3
    pick = [[4 * k + i for k in range(odd, width // 2, 2) for i in range(4)] for odd in (0, 1)]
    return builder.add(
        builder.shuffle_vector(a, b, _lanes(pick[0])), builder.shuffle_vector(a, b, _lanes(pick[1]))
    )


def _one_token_sums(builder: ir.IRBuilder, rows: list[Halves], x: Halves) -> ir.Value:
    """16 rows' blocks against one token's block -> <16 x i32>, lane r = row r's exact block sum.

    Each row's products are summed into a few lanes by its own multiply-adds (no transpose of the
    weights), then the 16 rows' lane vectors are reduced together: two stages of pair sums within
    128-bit chunks leave four rows per chunk, then chunk pairs are added until each row has one lane,
    in row order. Integer sums: exact in any order."""
    if WIDE:
        x32 = builder.shuffle_vector(x[0], x[1], _lanes(range(32)))
        zero = ir.Constant(_vec(_I32, 16), None)
        level = [
            _dot_acc16(builder, zero, builder.shuffle_vector(lo, hi, _lanes(range(32))), x32)
            for lo, hi in rows
        ]
        width = 16
    else:
        level = [_block_partial(builder, w, x, False) for w in rows]
        width = 8
    for _ in range(2):
        level = [_in_chunk_sums(builder, level[j], level[j + 1], width) for j in range(0, len(level), 2)]
    while len(level) * width > GROUP_ROWS:
        level = [_chunk_pair_sums(builder, level[j], level[j + 1], width) for j in range(0, len(level), 2)]
    if len(level) == 1:
        return level[0]
    return builder.shuffle_vector(level[0], level[1], _lanes(range(16)))


# i8_rows16[n - 1](w, w_off, w_stride, x, x_off, x_stride, xs, xs_off, sc, sc_off, n_groups,
#                  out, out_off, out_stride, n_blocks), n = 1..TILE tokens; C-contiguous arrays of any
# rank, offsets and strides in elements: for rows r < 16 (row r's weights from w_off + r * w_stride,
# its scales sc[sc_off + r * n_groups + g], g < n_groups, each covering n_blocks / n_groups blocks) and
# tokens t < n (activations from x_off + t * x_stride, block scales xs[xs_off + t * n_blocks + b]),
# out[out_off + t * out_stride + r] = the chain above with ws[b] = that row's scale of b's group.
# u4_rows16: the same for nibble-packed weights (16 bytes a block, ggml's Q4 order; w in bytes), with
# (zr, gs, gs_off) after n_groups: zeros laid out as sc, group sums of the activations
# gs[gs_off + t * n_groups + g], and int4's zero term added last (kernels._zero_term's chain).
i8_rows16 = tuple(rows16_intrinsic("i8", n) for n in range(1, TILE + 1))
u4_rows16 = tuple(rows16_intrinsic("u4", n) for n in range(1, TILE + 1))


def _fma32_codegen(context, builder, signature, args):
    return _call(builder, "llvm.fma.f32", _F32, list(args))


@intrinsic
def fma32(typingctx, a, b, c):
    """a * b + c in float32 with one rounding (row_chain's step, the row groups' lane operation)."""
    if not all(t == types.float32 for t in (a, b, c)):
        return None
    return types.float32(types.float32, types.float32, types.float32), _fma32_codegen

"""Acceptance check of the fused-rnn binary against PyTorch on fresh random cases.

For each case it builds a randomly initialised torch module, writes
weights.safetensors and input.safetensors into a temporary folder, runs

    <bin> run --weights W --input X --output Y --device <device> [--dtype D]

and compares Y's `output`, `h_n` and (for LSTM) `c_n` with the module evaluated in float64.
Error per tensor = max|got - ref| / max|ref|; a case passes if every error <= --tol.

Kinds: rnn (nn.RNN tanh/relu), lstm (nn.LSTM, projection in some cases), gru (nn.GRU),
attention (additive, general and dot scores; see below).
The weights' metadata holds `batch_first` (and `nonlinearity` for rnn). The input file holds
`input`, optional `h0` [L*D,B,H_out] (H_out = proj_size if > 0 else H), for LSTM `c0` [L*D,B,H]
whenever `h0` is present, and optional int64 `lengths` [B] (unsorted, with 1 and T).

attention: the semantics and file formats are those of scripts/fixtures/make_attention_fixtures.py,
whose Case, Attention module, check_case, build_inputs and scores this script imports. The
weights hold `query_proj.weight`/`.bias`, `key_proj.weight`/`.bias`, `score.weight` as the kind
needs (metadata `kind`, and for dot sometimes `scale`); the input holds `query` [B,Dq] or
[B,Tq,Dq], `keys` [B,L,Dk], optional `values` [B,L,Dv] and optional int64 `lengths` [B]
(unsorted, with 1 and L). Y's `context` [B,(Tq,)Dv] and `weights` [B,(Tq,)L] are compared with
the float64 reference. --device and --dtype apply to every kind.
Every fifth attention case scales the keys (general, dot) or score.weight (additive) so that
the largest |score| is 100..150: past 88.7, where f32 exp overflows unless the max is
subtracted. Larger scores are not drawn: f32 rounding of a score is ~|score|*6e-8 and moves
the weights of near-tied keys by about that much, so at |score| >~ 250 even torch's own float32
evaluation exceeds the default --tol 1e-5 on some rows.

With --grad, each case also gets random upstream gradients in a gradient file (grad_output,
grad_h_n and grad_c_n; for attention grad_context); the binary's `input.grad`, `h0.grad`,
`c0.grad` (attention: `query.grad`, `keys.grad`, `values.grad`) and `<parameter>.grad` are
compared with float64 autograd of sum(output*grad_output) + sum(h_n*grad_h_n) (+ c_n), or of
sum(context*grad_context).

Usage (needs torch, safetensors and numpy):
    python3 scripts/check_against_torch.py --bin target/release/fused-rnn \
        [--device cpu] [--kinds rnn,lstm,gru,attention] [--seed N] [--count N] [--dtype f32] \
        [--tol 1e-5] [--grad]

Prints one line per case and a last line "N passed, M failed"; exits 1 if any failed.
"""

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import zlib
from dataclasses import dataclass, field

import torch
from safetensors.torch import load_file, save_file
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

# The attention semantics live in the fixture generator; it imports fixture_io from its folder.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures"))
import make_attention_fixtures as attn_fx  # noqa: E402

HIDDEN_SIZES = [1, 7, 16, 33, 64, 100, 128, 255, 256]
INPUT_SIZES = [1, 3, 5, 17, 64, 128, 256]
SEQ_LENS = [1, 2, 7, 16, 33, 50]
BATCHES = [1, 2, 3, 5, 8, 16]
ATTN_SIZES = [1, 2, 3, 5, 8, 16, 17, 33, 64, 100, 128]  # Dq, Dk, Dv, A
ATTN_SEQ_LENS = [1, 7, 33, 196]  # L
ATTN_QUERIES = [1, 2, 3, 5, 8]  # Tq when the query is [B,Tq,Dq]
ATTN_SCALES = ["0.5", "0.25", "0.125", "0.375", "0.0625"]  # exact in f32


@dataclass
class Case:
    name: str
    module: torch.nn.Module
    batch_first: bool
    metadata: dict
    inputs: dict = field(default_factory=dict)
    desc: str = ""
    attention: object = None  # attention only: the make_attention_fixtures.Case


def random_lengths(rng: random.Random, batch: int, seq_len: int) -> list:
    """Unsorted lengths in 1..=T with a full-length row and (if B > 1) a length-1 row."""
    lengths = [rng.randint(1, seq_len) for _ in range(batch)]
    lengths[0] = seq_len
    if batch > 1:
        lengths[1] = 1
    rng.shuffle(lengths)
    return lengths


def make_inputs(rng: random.Random, gen: torch.Generator, *, seq_len, batch, input_size,
                hidden_size, num_states, batch_first, with_h0, with_lengths,
                cell_size=None) -> dict:
    """input, optional h0 [num_states,B,hidden_size] (plus c0 [num_states,B,cell_size] when
    cell_size is given, i.e. for an LSTM) and optional lengths."""
    shape = (batch, seq_len, input_size) if batch_first else (seq_len, batch, input_size)
    inputs = {"input": torch.randn(shape, generator=gen)}
    if with_h0:
        inputs["h0"] = torch.randn(num_states, batch, hidden_size, generator=gen) * 0.5
        if cell_size is not None:
            inputs["c0"] = torch.randn(num_states, batch, cell_size, generator=gen) * 0.5
    if with_lengths:
        inputs["lengths"] = torch.tensor(random_lengths(rng, batch, seq_len), dtype=torch.int64)
    return inputs


def make_rnn_case(index: int, seed: int) -> Case:
    """A random nn.RNN case; the index cycles through the feature combinations."""
    rng = random.Random(seed)
    nonlinearity = ("tanh", "relu")[index % 2]
    bidirectional = (index // 2) % 2 == 1
    batch_first = (index // 4) % 2 == 1
    num_layers = 1 + index % 3
    with_h0 = rng.random() < 0.5
    with_lengths = rng.random() < 0.5
    bias = rng.random() < 0.85
    big = index % 5 == 4
    hidden = 256 if big else rng.choice(HIDDEN_SIZES)
    input_size = rng.choice(INPUT_SIZES)
    seq_len = 50 if big else rng.choice(SEQ_LENS)
    batch = rng.choice(BATCHES)

    torch.manual_seed(2 * seed)
    module = torch.nn.RNN(input_size, hidden, num_layers, nonlinearity=nonlinearity, bias=bias,
                          batch_first=batch_first, bidirectional=bidirectional)
    dirs = 2 if bidirectional else 1
    gen = torch.Generator().manual_seed(2 * seed + 1)
    inputs = make_inputs(rng, gen, seq_len=seq_len, batch=batch, input_size=input_size,
                         hidden_size=hidden, num_states=num_layers * dirs,
                         batch_first=batch_first, with_h0=with_h0, with_lengths=with_lengths)
    flags = [nonlinearity, f"L={num_layers}", "bi" if bidirectional else "uni"]
    flags += [f for f, on in (("bf", batch_first), ("h0", with_h0), ("lens", with_lengths),
                              ("nobias", not bias)) if on]
    desc = f"{' '.join(flags)} I={input_size} H={hidden} B={batch} T={seq_len}"
    metadata = {"batch_first": str(batch_first).lower(), "nonlinearity": nonlinearity}
    return Case(f"rnn_{index:03d}", module, batch_first, metadata, inputs, desc)


def make_gated_case(kind: str, index: int, seed: int) -> Case:
    """A random nn.LSTM or nn.GRU case; the index cycles through the feature combinations.

    Every fifth case is big (H = 256, T = 50), every tenth of those H = 512 instead;
    LSTM cases with (index // 3) odd use a projection (proj_size in 1..H-1).
    """
    rng = random.Random(seed)
    bidirectional = index % 2 == 1
    batch_first = (index // 2) % 2 == 1
    num_layers = 1 + index % 3
    with_h0 = rng.random() < 0.5
    with_lengths = rng.random() < 0.5
    bias = rng.random() < 0.85
    big = index % 5 == 4
    proj = kind == "lstm" and (index // 3) % 2 == 1
    if big:
        hidden = 512 if index % 10 == 9 else 256
    else:
        hidden = rng.choice([h for h in HIDDEN_SIZES if h > 1] if proj else HIDDEN_SIZES)
    proj_size = rng.randint(1, min(hidden - 1, 128)) if proj else 0
    input_size = rng.choice(INPUT_SIZES)
    seq_len = 50 if big else rng.choice(SEQ_LENS)
    batch = rng.choice(BATCHES)

    torch.manual_seed(2 * seed)
    common = dict(bias=bias, batch_first=batch_first, bidirectional=bidirectional)
    if kind == "lstm":
        module = torch.nn.LSTM(input_size, hidden, num_layers, proj_size=proj_size, **common)
    else:
        module = torch.nn.GRU(input_size, hidden, num_layers, **common)
    dirs = 2 if bidirectional else 1
    gen = torch.Generator().manual_seed(2 * seed + 1)
    inputs = make_inputs(rng, gen, seq_len=seq_len, batch=batch, input_size=input_size,
                         hidden_size=proj_size or hidden, num_states=num_layers * dirs,
                         batch_first=batch_first, with_h0=with_h0, with_lengths=with_lengths,
                         cell_size=hidden if kind == "lstm" else None)
    flags = [f"L={num_layers}", "bi" if bidirectional else "uni"]
    flags += [f for f, on in (("bf", batch_first), ("h0", with_h0), ("lens", with_lengths),
                              ("nobias", not bias)) if on]
    sizes = f"I={input_size} H={hidden}" + (f" P={proj_size}" if proj_size else "")
    desc = f"{' '.join(flags)} {sizes} B={batch} T={seq_len}"
    metadata = {"batch_first": str(batch_first).lower()}
    return Case(f"{kind}_{index:03d}", module, batch_first, metadata, inputs, desc)


def make_lstm_case(index: int, seed: int) -> Case:
    return make_gated_case("lstm", index, seed)


def make_gru_case(index: int, seed: int) -> Case:
    return make_gated_case("gru", index, seed)


def max_score(c, module: torch.nn.Module, inputs: dict) -> float:
    """max |score| over the unmasked keys, in float64."""
    q = inputs["query"].double()
    if q.dim() == 2:
        q = q[:, None, :]
    e = attn_fx.scores(c, module, q, inputs["keys"].double())  # [B,Tq,L]
    lengths = inputs.get("lengths", torch.full((c.batch,), c.seq_len, dtype=torch.int64))
    valid = torch.arange(c.seq_len)[None, :] < lengths[:, None]  # [B,L]
    return e.abs().masked_fill(~valid[:, None, :], 0.0).max().item()


def make_attention_case(index: int, seed: int) -> Case:
    """A random attention case; the index cycles through kind (index % 3), L (index % 4) and
    the query's rank ((index // 4) % 2); every fifth case has large scores."""
    rng = random.Random(seed)
    kind = ("additive", "general", "dot")[index % 3]
    seq_len = ATTN_SEQ_LENS[index % 4]
    tq = rng.choice(ATTN_QUERIES) if (index // 4) % 2 == 1 else None
    with_values = rng.random() < 0.5
    with_lengths = rng.random() < 0.5
    big = index % 5 == 4
    # Lengths hold both 1 and L, so they need two rows.
    batch = rng.choice([b for b in BATCHES if b > 1] if with_lengths else BATCHES)
    d_q = rng.choice(ATTN_SIZES)
    d_k = d_q if kind == "dot" else rng.choice(ATTN_SIZES)
    extra = {}
    if kind == "additive":
        extra = dict(attn=rng.choice(ATTN_SIZES), query_bias=rng.random() < 0.5,
                     key_bias=rng.random() < 0.5, score_gain=rng.choice([1.0, 4.0]))
    elif kind == "dot" and rng.random() < 0.6:
        extra = dict(scale=rng.choice(ATTN_SCALES))
    c = attn_fx.Case(
        kind, f"attn_{index:03d}", seed, d_q, d_k,
        d_v=rng.choice(ATTN_SIZES) if with_values else None, batch=batch, tq=tq,
        seq_len=seq_len,
        lengths=tuple(random_lengths(rng, batch, seq_len)) if with_lengths else None, **extra)

    torch.manual_seed(2 * seed)
    module = attn_fx.Attention(c)
    inputs = attn_fx.build_inputs(c)  # its generator is seeded from c.seed
    if big:
        # Scores are linear in score.weight (additive) and in the keys (general, dot): rescale
        # so that the largest |score| lands at the target.
        gain = rng.uniform(100.0, 150.0) / max(max_score(c, module, inputs), 1e-3)
        if kind == "additive":
            c.score_gain *= gain
            with torch.no_grad():
                module.score.weight.mul_(gain)  # as Attention(c) does with score_gain
        else:
            c.key_gain = gain
            inputs = attn_fx.build_inputs(c)  # the same draws, keys times key_gain
    attn_fx.check_case(c)
    top = max_score(c, module, inputs)

    metadata = {"kind": kind}
    if c.scale is not None:
        metadata["scale"] = c.scale
    flags = [kind, "q1" if tq is None else f"Tq={tq}"]
    if kind == "additive":
        flags += [f for f, on in (("nobq", not c.query_bias), ("nobk", not c.key_bias)) if on]
    if kind == "dot":
        flags.append(f"s={c.scale or 1}")
    flags += [f for f, on in (("vals", with_values), ("lens", with_lengths)) if on]
    sizes = f"Dq={d_q} Dk={d_k}" + (f" Dv={c.d_v}" if with_values else "")
    sizes += f" A={c.attn}" if kind == "additive" else ""
    desc = f"{' '.join(flags)} {sizes} B={batch} L={seq_len} |e|<={top:.0f}"
    return Case(c.name, module, False, metadata, inputs, desc, attention=c)


CASE_MAKERS = {"rnn": make_rnn_case, "lstm": make_lstm_case, "gru": make_gru_case,
               "attention": make_attention_case}


def attention_reference(case: Case) -> dict:
    """make_attention_fixtures.reference without its final rounding to float32: the masked
    softmax of the float64 scores and the weighted sum of the values."""
    c, inputs = case.attention, case.inputs
    q = inputs["query"].double()
    if c.tq is None:
        q = q[:, None, :]
    k = inputs["keys"].double()
    v = inputs["values"].double() if "values" in inputs else k
    e = attn_fx.scores(c, case.module, q, k)  # [B,Tq,L]
    lengths = inputs.get("lengths", torch.full((c.batch,), c.seq_len, dtype=torch.int64))
    valid = torch.arange(c.seq_len)[None, :] < lengths[:, None]  # [B,L]
    w = torch.softmax(e.masked_fill(~valid[:, None, :], float("-inf")), dim=-1)
    ctx = w @ v  # [B,Tq,Dv]
    if c.tq is None:
        w, ctx = w[:, 0], ctx[:, 0]
    return {"context": ctx, "weights": w}


def reference(case: Case) -> dict:
    """Evaluate the module in float64 on the float32-rounded weights and inputs."""
    if case.attention is not None:
        return attention_reference(case)
    module = case.module.double()
    x = case.inputs["input"].double()
    hx = case.inputs["h0"].double() if "h0" in case.inputs else None
    if "c0" in case.inputs:
        hx = (hx, case.inputs["c0"].double())
    with torch.no_grad():
        out, h_n, c_n = run_module(case, module, x, hx)
    if c_n is not None:
        return {"output": out, "h_n": h_n, "c_n": c_n}
    return {"output": out, "h_n": h_n}


def run_module(case: Case, module, x, hx):
    """The module on x (packed when the case has lengths); (output, h_n, c_n or None)."""
    if "lengths" in case.inputs:
        total = x.shape[1] if case.batch_first else x.shape[0]
        packed = pack_padded_sequence(x, case.inputs["lengths"], batch_first=case.batch_first,
                                      enforce_sorted=False)
        out, state = module(packed, hx)
        out, _ = pad_packed_sequence(out, batch_first=case.batch_first, total_length=total)
    else:
        out, state = module(x, hx)
    if isinstance(state, tuple):
        return out, state[0], state[1]
    return out, state, None


def make_grads(case: Case, expected: dict, seed: int) -> dict:
    """Random upstream gradients shaped like the forward results."""
    gen = torch.Generator().manual_seed(seed)
    names = {"output": "grad_output", "h_n": "grad_h_n", "c_n": "grad_c_n",
             "context": "grad_context"}
    return {names[k]: torch.randn(v.shape, generator=gen, dtype=torch.float32)
            for k, v in expected.items() if k in names}


def attention_grad_reference(case: Case, grads: dict) -> dict:
    """float64 autograd of sum(context*grad_context), named as the binary writes it."""
    return attn_fx.gradients(case.attention, case.module.double(), case.inputs,
                             grads["grad_context"])


def grad_reference(case: Case, grads: dict) -> dict:
    """float64 autograd of sum(output*grad_output) + sum(h_n*grad_h_n) (+ c_n): the input's,
    h0's, c0's and every parameter's gradient, named as the binary writes them."""
    module = case.module.double()
    with torch.enable_grad():
        x = case.inputs["input"].double().requires_grad_()
        leaves = {"input": x}
        hx = None
        if "h0" in case.inputs:
            leaves["h0"] = case.inputs["h0"].double().requires_grad_()
            hx = leaves["h0"]
            if "c0" in case.inputs:
                leaves["c0"] = case.inputs["c0"].double().requires_grad_()
                hx = (hx, leaves["c0"])
        out, h_n, c_n = run_module(case, module, x, hx)
        loss = (out * grads["grad_output"].double()).sum()
        loss = loss + (h_n * grads["grad_h_n"].double()).sum()
        if c_n is not None:
            loss = loss + (c_n * grads["grad_c_n"].double()).sum()
        params = dict(module.named_parameters())
        wrt = list(leaves.values()) + list(params.values())
        got = torch.autograd.grad(loss, wrt)
    names = [f"{k}.grad" for k in leaves] + [f"{k}.grad" for k in params]
    return dict(zip(names, got))


def write_case(case: Case, folder: str) -> tuple:
    os.makedirs(folder, exist_ok=True)
    weights = os.path.join(folder, "weights.safetensors")
    inputs = os.path.join(folder, "input.safetensors")
    state = {k: v.contiguous() for k, v in case.module.state_dict().items()}
    save_file(state, weights, metadata=case.metadata)
    save_file(case.inputs, inputs)
    return weights, inputs


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    if got.shape != ref.shape:
        raise ValueError(f"shape {tuple(got.shape)} != expected {tuple(ref.shape)}")
    scale = ref.abs().max().item() if ref.numel() else 0.0
    diff = (got.double() - ref).abs().max().item() if ref.numel() else 0.0
    if diff != diff:  # NaN
        return float("inf")
    return diff / scale if scale > 0 else diff


def run_binary(args, weights: str, inputs: str, output: str,
               grads: str = None) -> subprocess.CompletedProcess:
    cmd = [args.bin, "run", "--weights", weights, "--input", inputs, "--output", output,
           "--device", args.device]
    if grads:
        cmd += ["--grad", grads]
    if args.dtype:
        cmd += ["--dtype", args.dtype]
    return subprocess.run(cmd, capture_output=True, text=True)


def last_line(text: str) -> str:
    lines = [l for l in text.strip().splitlines() if l.strip()]
    return lines[-1] if lines else "(no stderr)"


def check_case(args, case: Case, workdir: str) -> bool:
    folder = os.path.join(workdir, case.name)
    weights, inputs = write_case(case, folder)
    expected = reference(case)
    output = os.path.join(folder, "output.safetensors")
    grads = None
    if args.grad:
        upstream = make_grads(case, expected, zlib.crc32(case.name.encode()))
        grads = os.path.join(folder, "grad.safetensors")
        save_file({k: v.contiguous() for k, v in upstream.items()}, grads)
        reference_of = attention_grad_reference if case.attention is not None else grad_reference
        expected.update(reference_of(case, upstream))
    proc = run_binary(args, weights, inputs, output, grads)
    head = f"{case.name:8s} {case.desc:52s}"
    if proc.returncode != 0:
        print(f"{head} FAIL exit {proc.returncode}: {last_line(proc.stderr)}")
        return False
    try:
        got = load_file(output)
        missing = [k for k in expected if k not in got]
        if missing:
            raise KeyError(f"output file lacks {', '.join(missing)}")
        errors = {k: relative_error(got[k], ref) for k, ref in expected.items()}
    except Exception as exc:  # missing file/tensor, wrong shape
        print(f"{head} FAIL {type(exc).__name__}: {exc}")
        return False
    ok = all(e <= args.tol for e in errors.values())
    if len(errors) > 4:  # with gradients: the worst, not every tensor
        worst = max(errors, key=errors.get)
        report = f"{len(errors)} tensors, worst {worst} {errors[worst]:.2e}"
    else:
        report = "  ".join(f"{k} {e:.2e}" for k, e in errors.items())
    print(f"{head} {report}  {'PASS' if ok else 'FAIL'}")
    return ok


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin", required=True, help="path to the fused-rnn binary")
    p.add_argument("--device", default="cpu")
    p.add_argument("--kinds", default="rnn", help=f"comma list of {','.join(CASE_MAKERS)}")
    p.add_argument("--seed", type=int, default=20250, help="base seed for the random cases")
    p.add_argument("--count", type=int, default=20, help="cases per kind")
    p.add_argument("--dtype", default=None, help="passed to the binary as --dtype when given")
    p.add_argument("--tol", type=float, default=1e-5)
    p.add_argument("--keep", action="store_true", help="keep and print the temp folder")
    p.add_argument("--grad", action="store_true",
                   help="also check the backward's gradients")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in CASE_MAKERS]
    if unknown:
        sys.exit(f"unknown kind(s): {', '.join(unknown)}; known: {', '.join(CASE_MAKERS)}")
    if not (os.path.isfile(args.bin) and os.access(args.bin, os.X_OK)):
        sys.exit(f"binary not found or not executable: {args.bin}")
    torch.set_grad_enabled(False)
    workdir = tempfile.mkdtemp(prefix="fused-rnn-check-")
    passed = failed = 0
    for kind in kinds:
        for i in range(args.count):
            case = CASE_MAKERS[kind](i, args.seed * 1000 + i)
            if check_case(args, case, workdir):
                passed += 1
            else:
                failed += 1
    if args.keep:
        print(f"cases kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

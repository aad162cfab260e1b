"""Time torch.nn.RNN / nn.LSTM / nn.GRU (cuDNN) inference on a CUDA GPU as a baseline for fused-rnn.

Ops (--ops, default all), each 1 layer, unidirectional, I = H, T = 128, under torch.no_grad():
  rnn   nn.RNN tanh, H in {256, 1024}, B in {1, 64}
  lstm  nn.LSTM,     H in {256, 1024}, B in {1, 16, 256}
  gru   nn.GRU,      H in {256, 1024}, B in {1, 16, 256}
for dtypes float32/float16/bfloat16. With --persistent, instead the persistent-kernel shapes
(float32 and bfloat16): LSTM H=768 B=16 T=1024, LSTM H=1024 B=1 T=256, GRU H=512 B=8 T=512 and
tanh RNN H=1024 B=4 T=1000. With --train, instead one training step (forward, then backward of
sum(output * g) into the input and every weight) at the training shapes: LSTM and GRU H=1024 B=64
T=128, LSTM H=256 B=32 T=100 (float32 and bfloat16).
Each configuration: 10 warm-up forwards, then 50 timed with CUDA events.
Prints a Markdown table and writes the same rows as JSON to --json.

Usage (needs torch with CUDA):
    python3 scripts/torch_gpu_bench.py --json torch_rnn_bench.json [--ops rnn,lstm,gru]
        [--persistent | --train]
"""

import argparse
import json

import torch

HIDDEN = [256, 1024]
SEQ_LEN = 128
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
WARMUP, ITERS = 10, 50

# op key -> (row label, module constructor for (I, H), batch sizes)
OPS = {
    "rnn": ("torch.nn.RNN tanh (cuDNN)",
            lambda i, h: torch.nn.RNN(i, h, 1, nonlinearity="tanh"), [1, 64]),
    "lstm": ("torch.nn.LSTM (cuDNN)", lambda i, h: torch.nn.LSTM(i, h, 1), [1, 16, 256]),
    "gru": ("torch.nn.GRU (cuDNN)", lambda i, h: torch.nn.GRU(i, h, 1), [1, 16, 256]),
}


# (op, H, B, T): the shapes the persistent kernels are measured on.
PERSISTENT = [("lstm", 768, 16, 1024), ("lstm", 1024, 1, 256), ("gru", 512, 8, 512),
              ("rnn", 1024, 4, 1000)]


def time_forward(op: str, hidden: int, batch: int, dtype: torch.dtype,
                 seq_len: int = SEQ_LEN) -> float:
    """Mean microseconds per forward of a 1-layer module of the given op."""
    torch.manual_seed(0)
    module = OPS[op][1](hidden, hidden).cuda().to(dtype).eval()
    module.flatten_parameters()  # one contiguous weight buffer, as cuDNN wants
    x = torch.randn(seq_len, batch, hidden, device="cuda", dtype=dtype)
    with torch.no_grad():
        for _ in range(WARMUP):
            module(x)
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(ITERS):
            module(x)
        end.record()
        torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000.0 / ITERS


# (op, H, B, T): the shapes training is measured on.
TRAIN = [("lstm", 1024, 64, 128), ("gru", 1024, 64, 128), ("lstm", 256, 32, 100)]


def time_train(op: str, hidden: int, batch: int, dtype: torch.dtype, seq_len: int) -> float:
    """Mean microseconds per forward + backward (input and weight gradients)."""
    torch.manual_seed(0)
    module = OPS[op][1](hidden, hidden).cuda().to(dtype).train()
    module.flatten_parameters()  # one contiguous weight buffer, as cuDNN wants
    x = torch.randn(seq_len, batch, hidden, device="cuda", dtype=dtype, requires_grad=True)
    g = torch.randn(seq_len, batch, hidden, device="cuda", dtype=dtype)

    def step():
        out, _ = module(x)
        out.backward(g)

    for _ in range(WARMUP):
        step()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(ITERS):
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000.0 / ITERS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, help="path of the JSON rows to write")
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma list of {','.join(OPS)}")
    parser.add_argument("--persistent", action="store_true",
                        help="time the persistent-kernel shapes instead")
    parser.add_argument("--train", action="store_true",
                        help="time forward + backward at the training shapes instead")
    args = parser.parse_args()
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    unknown = [o for o in ops if o not in OPS]
    if unknown:
        parser.error(f"unknown op(s): {', '.join(unknown)}; known: {', '.join(OPS)}")
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    torch.backends.cudnn.enabled = True
    card = torch.cuda.get_device_name()
    timer = time_train if args.train else time_forward
    if args.persistent or args.train:
        shapes = PERSISTENT if args.persistent else TRAIN
        cases = [(op, h, b, t, d) for op, h, b, t in shapes for d in ("float32", "bfloat16")]
    else:
        cases = [(op, h, b, SEQ_LEN, d) for op in ops for d in DTYPES for h in HIDDEN
                 for b in OPS[op][2]]
    rows = []
    for op, hidden, batch, seq_len, dtype_name in cases:
        us = timer(op, hidden, batch, DTYPES[dtype_name], seq_len)
        label = OPS[op][0] + (" forward+backward" if args.train else "")
        rows.append({"op": label, "dtype": dtype_name, "H": hidden, "B": batch,
                     "T": seq_len, "us_per_forward": round(us, 2),
                     "us_per_step": round(us / seq_len, 3), "card": card})
    print("| op | dtype | H | B | T | µs/forward | µs/step | card |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['op']} | {r['dtype']} | {r['H']} | {r['B']} | {r['T']} "
              f"| {r['us_per_forward']:.2f} | {r['us_per_step']:.3f} | {r['card']} |")
    with open(args.json, "w") as f:
        json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()

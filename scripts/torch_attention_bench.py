"""Time one soft-attention decoding step in eager PyTorch on a CUDA GPU as a baseline for fused-rnn.

One query per batch row (Tq = 1) over precomputed keys, under torch.no_grad():
  additive  e = tanh(q @ Wq.T + bq + kp) @ v,   kp = K @ Wk.T + bk
  general   e = kp @ q,                          kp = K @ W.T
  dot       e = (K @ q) / sqrt(D)
then masked_fill(-inf) past each row's length, softmax (in the tensor's dtype), context = w @ V.
Cases: kind x dtype {float32, bfloat16} x B {1, 64} x L {196, 1000}, D = Dq = Dk = Dv = A = 512.
The key side (kp) is built once outside the timing, as the library computes it once per source.
With --backward: autograd of the same composition, key side included (forward + backward, as
fused-rnn's `Attention::backward` recomputes the forward), the gradients of the query, the keys
(= values) and every parameter, grads set to None before each step, at B = 64, L = 196 only;
named torch_attention_backward_{kind}_{dtype}/B64_L196_D512.
Each case: 20 warm-up steps, then --reps steps, each timed with CUDA events; reports the median.

Usage (needs torch with CUDA):
    python3 scripts/torch_attention_bench.py [--backward] [--reps 200] [--json out.json]
"""

import argparse
import json
import math
import statistics
import sys

import torch

KINDS = ["additive", "general", "dot"]
DTYPES = {"float32": (torch.float32, "f32"), "bfloat16": (torch.bfloat16, "bf16")}
BATCHES = [1, 64]
KEYS = [196, 1000]
DIM = 512
WARMUP = 20


def make_case(kind: str, batch: int, keys: int, dtype: torch.dtype, backward: bool = False):
    """Inputs, weights and the key side; returns a closure running one step (with --backward,
    forward and backward of every leaf)."""
    torch.manual_seed(0)
    dev = "cuda"

    def leaf(t):
        return t.to(dtype).requires_grad_(backward)

    rnd = lambda *s: leaf(torch.randn(*s, device=dev) / math.sqrt(DIM))  # noqa: E731
    k = leaf(torch.randn(batch, keys, DIM, device=dev))
    v_in = k  # V = K: encoder outputs serve as both keys and values
    q = leaf(torch.randn(batch, DIM, device=dev))
    lengths = torch.randint(1, keys + 1, (batch,), dtype=torch.long)
    lengths[0] = keys  # at least one full-length row so no case is trivially short
    mask = torch.arange(keys)[None, :] >= lengths[:, None]
    mask = mask.to(dev)
    if kind == "additive":
        wq, bq, wk, bk, v = rnd(DIM, DIM), rnd(DIM), rnd(DIM, DIM), rnd(DIM), rnd(1, DIM)
        params = [wq, bq, wk, bk, v]

        def key_side():
            return k @ wk.t() + bk

        def scores(kp):
            qp = q @ wq.t() + bq
            return (torch.tanh(qp[:, None, :] + kp) @ v.t()).squeeze(-1)
    elif kind == "general":
        w = rnd(DIM, DIM)
        params = [w]

        def key_side():
            return k @ w.t()

        def scores(kp):
            return torch.bmm(kp, q[:, :, None]).squeeze(-1)
    else:
        scale = 1.0 / math.sqrt(DIM)
        params = []

        def key_side():
            return k

        def scores(kp):
            return scale * torch.bmm(kp, q[:, :, None]).squeeze(-1)

    def attend(kp):
        e = scores(kp).masked_fill(mask, float("-inf"))
        w = torch.softmax(e, dim=-1)
        return torch.bmm(w[:, None, :], v_in).squeeze(1)

    if backward:
        grad = torch.randn(batch, DIM, device=dev).to(dtype)
        leaves = [q, k] + params

        def train_step():
            for t in leaves:
                t.grad = None
            attend(key_side()).backward(grad)

        return train_step
    kp = key_side()
    return lambda: attend(kp)


def time_step(step, reps: int, grad: bool = False) -> float:
    """Median microseconds per step; each step is bracketed by its own CUDA events."""
    with torch.set_grad_enabled(grad):
        for _ in range(WARMUP):
            step()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(reps)]
        torch.cuda.synchronize()
        for start, end in events:
            start.record()
            step()
            end.record()
        torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) * 1000.0 for s, e in events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=200, help="timed steps per case (default 200)")
    parser.add_argument("--json", help="path of the JSON rows to write")
    parser.add_argument("--backward", action="store_true",
                        help="time forward + backward (autograd) at B = 64, L = 196")
    args = parser.parse_args()
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    if not torch.cuda.is_available():
        print("torch_attention_bench: CUDA is not available; needs a CUDA GPU", file=sys.stderr)
        sys.exit(2)
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
    rows = []
    sizes = [(64, 196)] if args.backward else [(b, n) for b in BATCHES for n in KEYS]
    name = "torch_attention_backward" if args.backward else "torch_attention"
    for kind in KINDS:
        for dname, (dtype, suffix) in DTYPES.items():
            for batch, keys in sizes:
                with torch.set_grad_enabled(args.backward):
                    step = make_case(kind, batch, keys, dtype, args.backward)
                us = time_step(step, args.reps, args.backward)
                print(f"{name}_{kind}_{suffix}/B{batch}_L{keys}_D{DIM}: {us:.1f} us", flush=True)
                rows.append({"kind": kind, "dtype": dname, "batch": batch, "keys": keys,
                             "dim": DIM, "backward": args.backward, "us": round(us, 2)})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()

"""Times torch.nn.RNN (tanh, 1 layer, I = H) forward on the CPU at the sizes of
benches/recurrent.rs's CPU group, and torch.nn.LSTM / torch.nn.GRU (1 layer, I = H = 256)
at T = 100, B = 32, with a given thread count, for comparison with `cargo bench`.
With --train, instead an LSTM's forward + backward (`out, _ = m(x); out.backward(g)`, the
input requiring grad) in float32 and float64, median of 10, at the sizes of benches/training.rs:
I = H = 256, B = 32, T = 100, and with --large also I = H = 1024, B = 64, T = 128.

Usage: python3 scripts/torch_cpu_bench.py [--threads 2] [--train [--large]]
"""

import argparse
import time

import torch

# (label, module class, hidden, batch, steps)
CASES = [
    ("torch.nn.RNN", torch.nn.RNN, 256, 1, 128),
    ("torch.nn.RNN", torch.nn.RNN, 256, 64, 128),
    ("torch.nn.LSTM", torch.nn.LSTM, 256, 32, 100),
    ("torch.nn.GRU", torch.nn.GRU, 256, 32, 100),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train", action="store_true", help="time LSTM forward + backward")
    parser.add_argument("--large", action="store_true", help="with --train, also H = 1024")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads")
    if args.train:
        train(args.large)
        return
    for label, cls, hidden, batch, steps in CASES:
        module = cls(hidden, hidden)
        x = torch.randn(steps, batch, hidden)
        with torch.no_grad():
            for _ in range(5):
                module(x)
            runs = 30
            start = time.perf_counter()
            for _ in range(runs):
                module(x)
            ms = (time.perf_counter() - start) / runs * 1e3
        print(f"{label} cpu H{hidden}_B{batch}_T{steps}: {ms:.2f} ms")


def train(large: bool) -> None:
    shapes = [(256, 32, 100)] + ([(1024, 64, 128)] if large else [])
    for hidden, batch, steps in shapes:
        for dtype in (torch.float32, torch.float64):
            torch.manual_seed(0)
            module = torch.nn.LSTM(hidden, hidden).to(dtype)
            x = torch.randn(steps, batch, hidden, dtype=dtype, requires_grad=True)
            g = torch.randn(steps, batch, hidden, dtype=dtype)
            times = []
            for k in range(12):
                start = time.perf_counter()
                out, _ = module(x)
                out.backward(g)
                if k >= 2:
                    times.append(time.perf_counter() - start)
            times.sort()
            ms = (times[4] + times[5]) / 2 * 1e3
            print(f"torch.nn.LSTM train cpu {dtype} H{hidden}_B{batch}_T{steps}: {ms:.1f} ms")


if __name__ == "__main__":
    main()

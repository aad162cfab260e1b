"""Times torch.nn.RNN (tanh, 1 layer, I = H) forward on the CPU at the sizes of
benches/rnn.rs's CPU group, and torch.nn.LSTM / torch.nn.GRU (1 layer, I = H = 256)
at T = 100, B = 32, with a given thread count, for comparison with `cargo bench`.

Usage: python3 scripts/torch_cpu_bench.py [--threads 2]
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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads")
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


if __name__ == "__main__":
    main()

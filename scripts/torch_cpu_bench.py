"""Times torch.nn.RNN (tanh, 1 layer, I = H) forward on the CPU at the sizes of
benches/rnn.rs's CPU group, with a given thread count, for comparison with `cargo bench`.

Usage: python3 scripts/torch_cpu_bench.py [--threads 2]
"""

import argparse
import time

import torch


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads")
    for hidden, batch, steps in [(256, 1, 128), (256, 64, 128)]:
        module = torch.nn.RNN(hidden, hidden)
        x = torch.randn(steps, batch, hidden)
        with torch.no_grad():
            for _ in range(5):
                module(x)
            runs = 30
            start = time.perf_counter()
            for _ in range(runs):
                module(x)
            ms = (time.perf_counter() - start) / runs * 1e3
        print(f"torch.nn.RNN cpu H{hidden}_B{batch}_T{steps}: {ms:.2f} ms")


if __name__ == "__main__":
    main()

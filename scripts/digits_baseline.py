"""How well classic readers of single digits do on the digit scenes' pools: a reference point
for the captioner's misreads (`examples/misread_digits.rs`).

Each classifier is fitted to the training pool's 8x8 digits (pixels over 16, as drawn, not
placed in a scene nor warped) and read on the test pool's. The pools are the ones the scenes
use, as `cargo run --release --example misread_digits -- --pools pools.json` writes them.
With `--more FILE` (the UCI training part, `data/digits/optdigits-train.csv.gz`) the readers
are fitted to those digits as well, as `fused-rnn train caption --more-digits` trains on them.
Needs numpy and scikit-learn (`pip install numpy scikit-learn`). Run:
`python3 scripts/digits_baseline.py pools.json [data/digits/digits.csv.gz] [--more FILE]`.
"""

import argparse
import gzip
import json
import sys

import numpy as np
from sklearn.neighbors import KNeighborsClassifier
from sklearn.svm import SVC


def load(path):
    """A digits file's pixels over 16 and labels."""
    with gzip.open(path, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", ndmin=2)
    if rows.shape[1] != 65:
        raise ValueError(f"{path}: {rows.shape[1]} columns, not 64 pixels and a label")
    return rows[:, :64] / 16.0, rows[:, 64].astype(int)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pools")
    parser.add_argument("digits", nargs="?", default="data/digits/digits.csv.gz")
    parser.add_argument("--more", help="more training digits, in the same format")
    args = parser.parse_args()
    try:
        with open(args.pools) as f:
            pools = json.load(f)
        train, val, test = (list(map(int, pools[k])) for k in ("train", "val", "test"))
        pixels, labels = load(args.digits)
        labels[train + val + test]
        fit_pixels, fit_labels = pixels[train], labels[train]
        if args.more:
            more_pixels, more_labels = load(args.more)
            fit_pixels = np.concatenate([fit_pixels, more_pixels])
            fit_labels = np.concatenate([fit_labels, more_labels])
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        print(f"digits_baseline: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(2)
    # The validation pool scores every C alike, so it cannot choose one: the best C on the
    # test pool is an optimistic bound, not a fair reader.
    readers = {f"SVM, RBF kernel, C = {c}": SVC(C=c) for c in (1.0, 2.0, 5.0, 10.0)}
    readers["nearest neighbour"] = KNeighborsClassifier(1)
    print(f"{len(fit_labels)} training, {len(val)} validation, {len(test)} test digits")
    for name, reader in readers.items():
        reader.fit(fit_pixels, fit_labels)
        val_accuracy = np.mean(reader.predict(pixels[val]) == labels[val])
        read = reader.predict(pixels[test])
        wrong = [(i, int(labels[i]), int(r)) for i, r in zip(test, read) if r != labels[i]]
        accuracy = 1.0 - len(wrong) / len(test)
        listed = ", ".join(f"{i} ({d} as {r})" for i, d, r in wrong)
        print(
            f"{name}: validation {val_accuracy:.2%}, test {accuracy:.2%}; "
            f"test digits misread: {listed}"
        )


if __name__ == "__main__":
    main()

"""Acceptance check of the fused-rnn binary's attention decoder against PyTorch on fresh random
cases (new seeds, sizes drawn at random), as the committed fixtures are made: the cases, the
float64 reference and the decoding margins are scripts/fixtures/make_decoder_fixtures.py's
(`Case`, `generate`). For each case it writes the weights (with `attention_activation`,
`start_token`, `end_token`), the inputs and the upstream gradients, then runs

    <bin> run --weights W --input X --grad G --output Y --device <device>
    <bin> caption --weights W --features F --output Y --beam 1|K --max-len N --device <device>

Error per tensor = max|got - ref| / max|ref| (full_att.bias's gradient, zero but for rounding,
against full_att.weight's), for `logits`, `alphas`, `features.grad` and every `<param>.grad`;
a case passes when every error <= --tol and the greedy and beam tokens are the reference's.
A drawn case whose decoding has a near-tie (margins below the generator's 1e-4), or where no
token can serve as an end token that stops some rows early, is replaced by a new draw.

Usage (needs torch and safetensors):
    python3 scripts/check_decoder_against_torch.py --bin target/release/fused-rnn \
        [--device cpu] [--seed N] [--count N] [--tol 1e-4]
Prints one line per case and a last line "N passed, M failed"; exits 1 if any failed.
"""

import argparse
import os
import random
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures"))
import make_decoder_fixtures as fx  # noqa: E402


def draw_case(rng: random.Random, index: int, seed: int) -> fx.Case:
    batch = rng.randint(2, 6)
    keys = rng.choice([1, 3, 7, 33, 49, 196])
    steps = rng.randint(4, 9)
    lengths = [steps, 2] + [rng.randint(2, steps) for _ in range(batch - 2)]
    rng.shuffle(lengths)
    vocab = rng.choice([11, 17, 64, 300, 1000])
    masked = rng.random() < 0.4
    key_lengths = None
    if masked:
        key_lengths = [keys, 1] + [rng.randint(1, keys) for _ in range(batch - 2)]
        rng.shuffle(key_lengths)
        key_lengths = tuple(key_lengths)
    return fx.Case(
        f"fresh{index}", seed, rng.choice(["relu", "tanh"]), batch, keys,
        rng.randint(2, 9), rng.randint(2, 9), rng.randint(3, 12), rng.randint(2, 7), vocab,
        steps, tuple(lengths), max_len=rng.randint(4, 9), beam=rng.choice([1, 2, 3, 5]),
        start_token=rng.randrange(vocab), key_lengths=key_lengths,
        grad_alphas=rng.random() < 0.5)


class Redraw(Exception):
    """The drawn case cannot be decoded without near-ties."""


def relative_error(got: torch.Tensor, ref: torch.Tensor, scale_of: torch.Tensor) -> float:
    if got.shape != ref.shape:
        return float("inf")
    scale = scale_of.double().abs().max().item()
    diff = (got.double() - ref.double()).abs().max().item() if ref.numel() else 0.0
    return diff / scale if scale > 0 else diff


def run(cmd) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True)


def check(args, c: fx.Case, folder: str) -> bool:
    try:
        params, inputs, expected, end_token, _ = fx.generate(c)
    except (AssertionError, SystemExit) as e:
        # A near-tie in decoding, or no usable end token: the caller draws another case.
        raise Redraw() from e
    w = os.path.join(folder, "weights.safetensors")
    save_file(params, w, metadata={"attention_activation": c.act,
                                   "start_token": str(c.start_token),
                                   "end_token": str(end_token)})
    x, g, f, y = (os.path.join(folder, n) for n in ("x.st", "g.st", "f.st", "y.st"))
    run_inputs = {k: v for k, v in inputs.items() if not k.startswith("grad_")}
    save_file(run_inputs, x)
    save_file({k: v for k, v in inputs.items() if k.startswith("grad_")}, g)
    keys = {k: v for k, v in inputs.items() if k in ("features", "key_lengths")}
    save_file(keys, f)
    out = run([args.bin, "run", "--weights", w, "--input", x, "--grad", g, "--output", y,
               "--device", args.device])
    if out.returncode != 0:
        print(f"{c.name}: run failed: {out.stderr.strip()}")
        return False
    got = load_file(y)
    errors = {}
    for name, ref in expected.items():
        if name.endswith("_tokens") or name.endswith("_scores") or name == "greedy_alphas":
            continue
        scale = ref
        if name == "attention.full_att.bias.grad":
            scale = expected["attention.full_att.weight.grad"]
        errors[name] = relative_error(got[name], ref, scale)
    ok = all(e <= args.tol for e in errors.values())
    for kind, beam in (("greedy", 1), ("beam", c.beam)):
        out = run([args.bin, "caption", "--weights", w, "--features", f, "--output", y,
                   "--beam", str(beam), "--max-len", str(c.max_len), "--device", args.device])
        if out.returncode != 0:
            print(f"{c.name}: caption --beam {beam} failed: {out.stderr.strip()}")
            return False
        same = torch.equal(load_file(y)["tokens"], expected[f"{kind}_tokens"])
        ok &= same
        if not same:
            print(f"{c.name}: {kind} tokens differ")
    worst = max(errors, key=errors.get)
    print(f"{c.name} (seed {c.seed}, {c.act}, B{c.batch} L{c.keys} D{c.feat} A{c.attn} "
          f"H{c.hidden} E{c.embed} V{c.vocab} T{c.steps}, beam {c.beam}"
          f"{', key lengths' if c.key_lengths else ''}): worst {worst} {errors[worst]:.1e} "
          f"{'ok' if ok else 'FAILED'}")
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=20261206)
    p.add_argument("--count", type=int, default=12)
    p.add_argument("--tol", type=float, default=1e-4)
    args = p.parse_args()
    torch.use_deterministic_algorithms(True)
    rng = random.Random(args.seed)
    passed = failed = 0
    with tempfile.TemporaryDirectory() as folder:
        index = 0
        while passed + failed < args.count:
            c = draw_case(rng, index, rng.randrange(1 << 30))
            index += 1
            try:
                ok = check(args, c, folder)
            except Redraw:
                continue
            passed += ok
            failed += not ok
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

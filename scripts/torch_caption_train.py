"""The captioner `fused-rnn train caption` trains, written in eager PyTorch, trained the same way
for the same minutes on the same scenes: the side-by-side baseline in BENCHMARKS.md.

Data: a Karpathy folder as `fused-rnn data digits --out DIR` writes it (dataset_*.json, grey PNG
images); the vocabulary as fused-rnn builds it (<pad> <start> <end> <unk>, then the training
words by descending count, ties alphabetical).

Model (as fused-rnn's defaults): the patch encoder, two 4x4 convolutions at stride 2 (16 and
32 channels, ReLU, padding 1; `--conv`, `none` for none) giving a 12x24 map of 48x96, then one
linear layer and a ReLU over each region's 16x16-pixel window of the map (4x4 entries at
stride 2, padding 1: a 6x12 grid) beside a one-hot of its position, D = 128; sgrvinod's
DecoderWithAttention (scripts/show_attend_tell.py) with A = H = 128, E = 64, no dropout. Training: batch 16, Adam, the learning rate falling linearly
from 3e-3 to 1e-4 over the minutes, cross-entropy plus the attention penalty (alpha_c = 1),
gradients clipped to global norm 5, each training image warped as fused-rnn's data::augment
warps it: a random affine map (rotation up to 0.14 rad, scales 1 +- 0.1, shear +- 0.15, shift
+- 1/24 of the height) plus an elastic field (offsets up to 1/32 of the height at grid corners
1/6 of the height apart, bilinear between them); bilinear sampling, edges extended.

Evaluation: greedy captions (at most 20 tokens) of the test split, exact-caption accuracy.

Usage: python3 scripts/torch_caption_train.py --data DIR [--minutes 10] [--threads 2]
    [--conv 16,32|none] [--encoder-hidden N]  (as `fused-rnn train caption`'s flags)
"""

import argparse
import collections
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from show_attend_tell import DecoderWithAttention  # noqa: E402

PAD, START, END, UNK = 0, 1, 2, 3


def load(data):
    name = [f for f in os.listdir(data) if f.startswith("dataset_") and f.endswith(".json")][0]
    with open(os.path.join(data, name)) as f:
        images = json.load(f)["images"]
    splits = collections.defaultdict(list)
    for im in images:
        path = os.path.join(data, im.get("filepath", ""), im["filename"])
        pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0
        words = [s["raw"].lower().split() for s in im["sentences"]]
        split = "train" if im["split"] == "restval" else im["split"]
        splits[split].append((pixels, words))
    return splits


def vocabulary(train):
    counts = collections.Counter(w for _, caps in train for c in caps for w in c)
    words = sorted(counts, key=lambda w: (-counts[w], w))
    return ["<pad>", "<start>", "<end>", "<unk>"] + words


class Encoder(nn.Module):
    def __init__(self, height, width, patch=8, window=16, dim=128, hidden=0, convs=()):
        super().__init__()
        # `fused-rnn train caption --conv 16,32`: 4x4 convolutions at stride 2 (padding 1, ReLU)
        # first, the windows then read from the last map in its units.
        channels = [1] + list(convs)
        self.stem = nn.Sequential(*[
            layer for cin, cout in zip(channels, channels[1:])
            for layer in (nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.ReLU())
        ])
        scale = 2 ** len(convs)
        window, patch = window // scale, patch // scale
        self.window, self.patch, self.pad = window, patch, (window - patch) // 2
        self.regions = (height // scale // patch) * (width // scale // patch)
        inputs = channels[-1] * window * window + self.regions
        # `fused-rnn train caption --encoder-hidden N`: a hidden layer before the keys.
        self.hidden = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU()) if hidden else None
        self.proj = nn.Linear(hidden or inputs, dim)

    def forward(self, x):  # x [B, 1, H, W]
        x = self.stem(x)
        cols = F.unfold(x, self.window, stride=self.patch, padding=self.pad).transpose(1, 2)
        one_hot = torch.eye(self.regions).expand(x.shape[0], -1, -1)
        h = torch.cat([cols, one_hot], dim=2)
        if self.hidden is not None:
            h = self.hidden(h)
        return F.relu(self.proj(h))


def warp(x, gen):
    """Each image of x [B, 1, H, W] by its own random affine map about the centre."""
    b, _, h, w = x.shape
    u = lambda bound: (torch.rand(b, generator=gen) * 2 - 1) * bound  # noqa: E731
    angle, sx, sy, shear = u(0.14), 1 + u(0.1), 1 + u(0.1), u(0.15)
    tx, ty = u(h / 24), u(h / 24)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # The inverse map in pixels, then in affine_grid's normalised coordinates.
    a, bb, c, d = cos / sx, (sin + shear) / sx, -sin / sy, cos / sy
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = a
    theta[:, 0, 1] = bb * (h - 1) / (w - 1)
    theta[:, 0, 2] = -(a * tx + bb * ty) * 2 / (w - 1)
    theta[:, 1, 0] = c * (w - 1) / (h - 1)
    theta[:, 1, 1] = d
    theta[:, 1, 2] = -(c * tx + d * ty) * 2 / (h - 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    # The elastic field: offsets in pixels at corners h/6 apart, interpolated, in grid units.
    cell = h / 6
    gy, gx = math.ceil(h / cell) + 1, math.ceil(w / cell) + 1
    corners = (torch.rand(b, 2, gy, gx, generator=gen) * 2 - 1) * (h / 32)
    span = ((gy - 1) * cell, (gx - 1) * cell)  # the pixels the corners cover
    field = F.interpolate(corners, size=(round(span[0]) + 1, round(span[1]) + 1), mode="bilinear",
                          align_corners=True)[:, :, :h, :w]
    grid = grid + torch.stack([field[:, 0] * 2 / (w - 1), field[:, 1] * 2 / (h - 1)], dim=3)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


def batch(examples, ids, rng):
    pixels = torch.from_numpy(np.stack([p for p, _ in examples]))[:, None]
    caps = [[START] + [ids.get(w, UNK) for w in rng.choice(c)] + [END] for _, c in examples]
    t = max(map(len, caps))
    captions = torch.tensor([c + [PAD] * (t - len(c)) for c in caps])
    lengths = torch.tensor([[len(c)] for c in caps])
    return pixels, captions, lengths


@torch.no_grad()
def greedy(encoder, decoder, pixels, max_len=20):
    f = encoder(pixels)
    h, c = decoder.init_hidden_state(f)
    word = torch.full((f.shape[0],), START, dtype=torch.long)
    out, done = [], torch.zeros(f.shape[0], dtype=torch.bool)
    for _ in range(max_len):
        awe, _ = decoder.attention(f, h)
        awe = torch.sigmoid(decoder.f_beta(h)) * awe
        h, c = decoder.decode_step(torch.cat([decoder.embedding(word), awe], 1), (h, c))
        word = decoder.fc(h).argmax(1)
        word = torch.where(done, torch.full_like(word, END), word)
        out.append(word)
        done |= word == END
        if done.all():
            break
    return torch.stack(out, 1).tolist()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--encoder-hidden", type=int, default=0)
    ap.add_argument("--conv", default="16,32")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    splits = load(args.data)
    vocab = vocabulary(splits["train"])
    ids = {w: i for i, w in enumerate(vocab)}
    h, w = splits["train"][0][0].shape
    convs = [] if args.conv == "none" else [int(c) for c in args.conv.split(",")]
    encoder = Encoder(h, w, hidden=args.encoder_hidden, convs=convs)
    decoder = DecoderWithAttention(128, 64, 128, len(vocab), 128, dropout=0.0)
    params = list(encoder.parameters()) + list(decoder.parameters())
    lr0, lr1 = 3e-3, 1e-4
    opt = torch.optim.Adam(params, lr=lr0)
    budget = args.minutes * 60
    train = splits["train"]
    order, pos, steps = [], 0, 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < budget:
        for g in opt.param_groups:
            g["lr"] = lr0 + (lr1 - lr0) * elapsed / budget
        if pos + args.batch > len(order):
            order, pos = list(range(len(train))), 0
            rng.shuffle(order)
        pixels, captions, lengths = batch([train[i] for i in order[pos:pos + args.batch]], ids, rng)
        pos += args.batch
        pixels = warp(pixels, gen)
        scores, caps_sorted, decode_lengths, alphas, _ = decoder(encoder(pixels), captions, lengths)
        targets = caps_sorted[:, 1:]
        scores = nn.utils.rnn.pack_padded_sequence(scores, decode_lengths, batch_first=True).data
        targets = nn.utils.rnn.pack_padded_sequence(targets, decode_lengths, batch_first=True).data
        loss = F.cross_entropy(scores, targets) + ((1.0 - alphas.sum(dim=1)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        steps += 1
    seconds = time.perf_counter() - start
    test = splits["test"]
    hits = 0
    for k in range(0, len(test), 250):
        chunk = test[k:k + 250]
        pixels = torch.from_numpy(np.stack([p for p, _ in chunk]))[:, None]
        for tokens, (_, refs) in zip(greedy(encoder, decoder, pixels), chunk):
            words = [vocab[t] for t in tokens[: tokens.index(END) if END in tokens else len(tokens)]]
            hits += any(words == r for r in refs)
    print(json.dumps({
        "steps": steps,
        "images": steps * args.batch,
        "seconds": round(seconds, 1),
        "images_per_second": round(steps * args.batch / seconds, 1),
        "test_images": len(test),
        "exact": round(hits / len(test), 4),
        "threads": args.threads,
        "conv": args.conv,
        "encoder_hidden": args.encoder_hidden,
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()

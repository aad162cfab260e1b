"""Times the show-attend-tell attention decoder (sgrvinod's a-PyTorch-Tutorial-to-Image-Captioning
`DecoderWithAttention`, ReLU attention) in eager PyTorch, float32, as a baseline for fused-rnn.

Training step (the default), as that tutorial's train() runs it on precomputed encoder features
(the encoder is not fine-tuned, so the features need no gradient):
  forward with teacher forcing: rows sorted by caption length, a per-step Python loop whose batch
  shrinks as captions end (attention, f_beta gate, LSTMCell, fc, dropout when --dropout > 0);
  pack_padded_sequence on the scores and on the targets (captions[:, 1:]), cross-entropy plus the
  doubly stochastic attention penalty alpha_c * ((1 - alphas.sum(1)) ** 2).mean(), alpha_c = 1;
  zero_grad, backward, Adam step (lr 4e-4). The tutorial's element-wise gradient clamp is left out.
With --greedy, instead greedy decoding under no_grad in eval mode, batched over the B images:
max_len = T - 1 steps from the start token, each taking the argmax of fc(h) and adding its
log_softmax to the row's score; no row stops early (random weights have no real end token). Two
variants: `literal` calls the tutorial's attention module every step (encoder_att(f) recomputed
each step, as its caption.py does), `hoisted` computes encoder_att(f) once per batch.

Sizes: CPU (default) B = 32, L = 49, D = 128, A = H = E = 128, V = 1000, T = 16;
--large: B = 64, L = 196, D = 512, A = H = E = 512, V = 10000, T = 20.
Caption lengths are 2 + 7b mod (T − 1) for row b, row 0 at T (as benches/decoder.rs); --full-length makes
every caption T long. Each measurement: --warmup steps, then the median of --steps steps, each
timed with perf_counter (after a CUDA synchronize on --device cuda).

Usage: python3 scripts/torch_decoder_bench.py [--threads 2] [--device cpu|cuda] [--large]
           [--greedy] [--full-length] [--dropout 0.0] [--steps 20] [--warmup 5]
"""

import argparse
import statistics
import time

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from show_attend_tell import DecoderWithAttention

CPU_SIZE = dict(B=32, L=49, D=128, A=128, H=128, E=128, V=1000, T=16)
LARGE_SIZE = dict(B=64, L=196, D=512, A=512, H=512, E=512, V=10000, T=20)
START_TOKEN = 1
ALPHA_C = 1.0


def make_batch(s: dict, device: str, full_length: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(s["B"], s["L"], s["D"], generator=g)
    if full_length:
        lengths = torch.full((s["B"],), s["T"], dtype=torch.int64)
    else:
        # The same lengths as benches/decoder.rs: 2 + 7b mod (T - 1), row 0 at T.
        lengths = torch.tensor([2 + (7 * b) % (s["T"] - 1) for b in range(s["B"])])
        lengths[0] = s["T"]
    captions = torch.randint(2, s["V"], (s["B"], s["T"]), generator=g)
    captions[:, 0] = START_TOKEN
    captions[torch.arange(s["T"])[None, :] >= lengths[:, None]] = 0  # <pad>
    return features.to(device), captions.to(device), lengths[:, None].to(device)


def train_step(decoder, optimizer, criterion, features, captions, caplens):
    scores, caps_sorted, decode_lengths, alphas, _ = decoder(features, captions, caplens)
    targets = caps_sorted[:, 1:]
    scores = pack_padded_sequence(scores, decode_lengths, batch_first=True).data
    targets = pack_padded_sequence(targets, decode_lengths, batch_first=True).data
    loss = criterion(scores, targets)
    loss = loss + ALPHA_C * ((1.0 - alphas.sum(dim=1)) ** 2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss


@torch.no_grad()
def greedy(decoder, features, max_len: int, hoisted: bool):
    """Batched greedy decoding from START_TOKEN for max_len steps: tokens [B, max_len] and the
    rows' summed log_softmax."""
    att = decoder.attention
    batch = features.size(0)
    h, c = decoder.init_hidden_state(features)
    tok = torch.full((batch,), START_TOKEN, dtype=torch.int64, device=features.device)
    tokens = torch.empty(batch, max_len, dtype=torch.int64, device=features.device)
    score = torch.zeros(batch, device=features.device)
    att1 = att.encoder_att(features) if hoisted else None
    for t in range(max_len):
        if hoisted:
            e = att.full_att(att.relu(att1 + att.decoder_att(h).unsqueeze(1))).squeeze(2)
            alpha = att.softmax(e)
            awe = (features * alpha.unsqueeze(2)).sum(dim=1)
        else:
            awe, alpha = att(features, h)
        awe = decoder.sigmoid(decoder.f_beta(h)) * awe
        h, c = decoder.decode_step(torch.cat([decoder.embedding(tok), awe], dim=1), (h, c))
        logp = torch.log_softmax(decoder.fc(h), dim=1)
        best, tok = logp.max(dim=1)
        score += best
        tokens[:, t] = tok
    return tokens, score


def timed(fn, device: str, steps: int, warmup: int) -> float:
    """Median milliseconds of fn() over `steps` runs after `warmup` runs."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--large", action="store_true",
                        help="B=64 L=196 D=A=H=E=512 V=10000 T=20 (the GPU benchmark size)")
    parser.add_argument("--greedy", action="store_true",
                        help="time greedy decoding instead of the training step")
    parser.add_argument("--full-length", action="store_true",
                        help="every caption T tokens long (default: lengths drawn from 2..=T)")
    parser.add_argument("--dropout", type=float, default=0.0,
                        help="dropout before fc in training (the tutorial uses 0.5; default 0)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be at least 1 and --warmup at least 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    s = LARGE_SIZE if args.large else CPU_SIZE
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{args.threads} threads"
    print(f"torch {torch.__version__}, {args.device} ({where})")
    size = "_".join(f"{k}{v}" for k, v in s.items())

    decoder = DecoderWithAttention(s["A"], s["E"], s["H"], s["V"], s["D"], args.dropout)
    decoder = decoder.to(args.device)
    features, captions, caplens = make_batch(s, args.device, args.full_length)

    if args.greedy:
        decoder.eval()
        for variant in ("literal", "hoisted"):
            ms = timed(lambda: greedy(decoder, features, s["T"] - 1, variant == "hoisted"),
                       args.device, args.steps, args.warmup)
            print(f"torch_decoder_greedy_{variant} {args.device} f32 {size} max_len{s['T'] - 1}: "
                  f"{ms:.2f} ms per batch ({s['B'] / ms * 1e3:.0f} images/s)", flush=True)
        return

    decoder.train()
    optimizer = torch.optim.Adam(decoder.parameters(), lr=4e-4)
    criterion = nn.CrossEntropyLoss().to(args.device)
    lengths = "full" if args.full_length else "mixed"
    tokens = int((caplens - 1).sum())
    ms = timed(lambda: train_step(decoder, optimizer, criterion, features, captions, caplens),
               args.device, args.steps, args.warmup)
    print(f"torch_decoder_train {args.device} f32 {size} lengths {lengths} ({tokens} decoded "
          f"tokens): {ms:.2f} ms per step", flush=True)


if __name__ == "__main__":
    main()

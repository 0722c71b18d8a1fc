#!/usr/bin/python3
"""Reference dump for the C sequence model (tests/unit/test_nn_lstm.c), made with PyTorch.

SeqModel below is the stage-5 model of reference-method.md as a plain nn.Module; its
state_dict keys are the C tensor names (common/nn/seqmodel.h). Every tensor starts from the
hashed formula of nn_hashinit.py. A batch of series of different lengths, padded at the front,
goes through the model in two modes:
  default:  each series exactly: the LSTMs run on packed sequences (pack_padded_sequence)
  original: the plain module on the padded batch (the forward direction runs through padding)
For each mode: logits, the loss over the valid slices, every parameter gradient, then Adam
steps (each after a forward and backward) with the loss of every forward and the weight
updates (final - initial).

--summary dumps each gradient and update as its L2 norm, max |value| and SAMPLES values at
fixed positions (the full-size model has 268 M parameters), and runs the default mode only.

--bf16 runs the default mode and a third, "bf16": the engine's mixed precision emulated in
torch. Each series alone (exactly the default mode's arithmetic), each LSTM direction as its
input projection x W_ih^T and a loop over its steps with the recurrent product h_prev W_hh^T.
These products and the linear layers' take their operands rounded to bf16 (round to nearest
even) and sum in fp32, and so do their backward products (ProductBF16: the output gradient,
the weight and the input rounded). The rest (biases, gates, cell state, the sums, loss,
Adam) is fp32, as in the engine (common/nn/seqmodel.h, common/nn/lstm.h).

Usage: lstm_ref.py --emb E --hidden H --lengths 5,3,1 --steps 3 --out FILE.h5
       [--summary | --bf16]
"""
import argparse

import h5py
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import nn_hashinit

SAMPLES = 4096  # values kept per tensor in summary mode


def dump(out, path, value, summary):
    """A tensor whole, or its norm, max |value| and values at evenly spread positions."""
    if not summary:
        out[path] = value
        return
    flat = value.reshape(-1).astype(np.float64)
    pos = np.unique(np.linspace(0, flat.size - 1, min(SAMPLES, flat.size)).astype(np.int64))
    out[f"{path}/norm"] = np.array([np.sqrt(np.sum(flat * flat))])
    out[f"{path}/max"] = np.array([np.max(np.abs(flat))])
    out[f"{path}/pos"] = pos
    out[f"{path}/val"] = value.reshape(-1)[pos]


def run_packed(lstm, x, lengths):
    """An LSTM over front-padded series as packed sequences; zeros at padded steps."""
    steps = x.shape[1]
    back = torch.zeros_like(x)
    for b, n in enumerate(lengths):
        back[b, :n] = x[b, steps - n:]
    packed = pack_padded_sequence(back, torch.tensor(lengths), batch_first=True,
                                  enforce_sorted=False)
    out, _ = lstm(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=steps)
    rows = []
    for b, n in enumerate(lengths):
        pad = out.new_zeros(steps - n, out.shape[2])
        rows.append(torch.cat([pad, out[b, :n]], 0))
    return torch.stack(rows)


def bf16_rounded(t):
    return t.to(torch.bfloat16).to(torch.float32)


class ProductBF16(torch.autograd.Function):
    """x W^T on bf16 operands with fp32 sums; the backward's dx = dy W and dW = dy^T x the
    same way."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return bf16_rounded(x) @ bf16_rounded(w).t()

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        dy = bf16_rounded(dy)
        rows = dy.reshape(-1, dy.shape[-1]).t()
        return dy @ bf16_rounded(w), rows @ bf16_rounded(x).reshape(-1, x.shape[-1])


def direction_bf16(x, w_ih, w_hh, b_ih, b_hh, reverse):
    """One LSTM direction over one series x [n][in] -> [n][H], gates i, f, g, o."""
    n = x.shape[0]
    projected = ProductBF16.apply(x, w_ih) + (b_ih + b_hh)
    h = c = None
    out = [None] * n
    for t in (range(n - 1, -1, -1) if reverse else range(n)):
        a = projected[t:t + 1]
        if h is not None:
            a = a + ProductBF16.apply(h, w_hh)
        i, f, g, o = a.chunk(4, 1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c = i * g if c is None else f * c + i * g
        h = o * torch.tanh(c)
        out[t] = h
    return torch.cat(out, 0)


def run_bf16(lstm, x, lengths):
    """The engine's mixed-precision LSTM over front-padded series; zeros at padded steps."""
    steps = x.shape[1]
    rows = []
    for b, n in enumerate(lengths):
        series = x[b, steps - n:]
        halves = [direction_bf16(series, getattr(lstm, "weight_ih_l0" + sfx),
                                 getattr(lstm, "weight_hh_l0" + sfx),
                                 getattr(lstm, "bias_ih_l0" + sfx),
                                 getattr(lstm, "bias_hh_l0" + sfx), sfx != "")
                  for sfx in ("", "_reverse")]
        pad = x.new_zeros(steps - n, 2 * lstm.hidden_size)
        rows.append(torch.cat([pad, torch.cat(halves, 1)], 0))
    return torch.stack(rows)


def linear_bf16(layer, x):
    """An nn.Linear as the engine's mixed precision computes it: bf16 product, fp32 bias."""
    return ProductBF16.apply(x, layer.weight) + layer.bias


class SeqModel(nn.Module):
    def __init__(self, emb, hidden, outputs=6):
        super().__init__()
        self.hidden = hidden
        self.lstm1 = nn.LSTM(3 * emb, hidden, batch_first=True, bidirectional=True)
        self.lstm2 = nn.LSTM(2 * hidden, hidden, batch_first=True, bidirectional=True)
        self.linear1 = nn.Linear(2 * hidden, 2 * hidden)
        self.linear2 = nn.Linear(2 * hidden, 2 * hidden)
        self.linear = nn.Linear(2 * hidden, outputs)

    def forward(self, x, embeddings, lengths=None, bf16=False):
        """x: the model input [E, dE_prev, dE_next], front-padded; lengths None: unpacked;
        bf16: the engine's mixed precision (run_bf16, needs lengths)."""
        if lengths is None:
            h1, _ = self.lstm1(x)
            h2, _ = self.lstm2(h1)
        elif bf16:
            h1 = run_bf16(self.lstm1, x, lengths)
            h2 = run_bf16(self.lstm2, h1, lengths)
        else:
            h1 = run_packed(self.lstm1, x, lengths)
            h2 = run_packed(self.lstm2, h1, lengths)
        skip = embeddings[:, :, :self.hidden]
        linear = linear_bf16 if bf16 else (lambda layer, v: layer(v))
        hidden = (h1 + h2 + F.relu(linear(self.linear1, h1)) + F.relu(linear(self.linear2, h2))
                  + torch.cat([skip, skip], -1))
        return linear(self.linear, hidden)


def model_input(embeddings, lengths):
    """[E, E - E_prev, E - E_next] per series, differences zero at its ends, padding zero."""
    batch, steps, emb = embeddings.shape
    x = torch.zeros(batch, steps, 3 * emb)
    for b, n in enumerate(lengths):
        e = embeddings[b, steps - n:]
        x[b, steps - n:, :emb] = e
        x[b, steps - n + 1:, emb:2 * emb] = e[1:] - e[:-1]
        x[b, steps - n:steps - 1, 2 * emb:] = e[:-1] - e[1:]
    return x


def method_loss(logits, labels, lengths):
    """Stage-3 weighted BCE over the valid (unpadded) slices."""
    steps = logits.shape[1]
    z = torch.cat([logits[b, steps - n:] for b, n in enumerate(lengths)])
    y = torch.cat([labels[b, steps - n:] for b, n in enumerate(lengths)])
    every = F.binary_cross_entropy_with_logits(z, y)
    anyh = F.binary_cross_entropy_with_logits(z[:, 5], y[:, 5])
    return (6.0 * every + anyh) / 7.0


def hashed_model(emb, hidden):
    model = SeqModel(emb, hidden)
    state = {k: torch.from_numpy(nn_hashinit.init_value(k, tuple(v.shape), True).copy())
             for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    return model


def run_mode(out, name, args, embeddings, labels, lengths):
    model = hashed_model(args.emb, args.hidden)
    initial = {k: v.detach().clone() for k, v in model.named_parameters()}
    x = model_input(embeddings, lengths)
    packed = None if name == "original" else lengths
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    losses = []
    for step in range(args.steps + 1):
        opt.zero_grad()
        logits = model(x, embeddings, packed, name == "bf16")
        loss = method_loss(logits, labels, lengths)
        losses.append(loss.item())
        if step == args.steps:
            break
        loss.backward()
        if step == 0:
            out[f"{name}/logits"] = logits.detach().numpy()
            for k, p in model.named_parameters():
                dump(out, f"{name}/grad/{k}", p.grad.numpy(), args.summary)
        opt.step()
    out[f"{name}/losses"] = np.array(losses, dtype=np.float64)
    for k, p in model.named_parameters():
        dump(out, f"{name}/update/{k}", (p.detach() - initial[k]).numpy(), args.summary)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--emb", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=8)
    ap.add_argument("--lengths", default="5,3,1")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--out", required=True)
    ap.add_argument("--summary", action="store_true")
    ap.add_argument("--bf16", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2 if args.summary else 1)
    lengths = [int(v) for v in args.lengths.split(",")]
    batch, steps = len(lengths), max(lengths)

    # Padded rows hold values too: both engines must ignore them.
    embeddings = torch.from_numpy(
        nn_hashinit.hashed(batch * steps * args.emb, 12345, 1.0).reshape(batch, steps, args.emb))
    labels = torch.from_numpy(
        (nn_hashinit.hashed(batch * steps * 6, 777, 1.0) > 0.3).astype(np.float32)
        .reshape(batch, steps, 6))

    with h5py.File(args.out, "w") as out:
        out["embeddings"] = embeddings.numpy()
        out["labels"] = labels.numpy()
        out["lengths"] = np.array(lengths, dtype=np.int32)
        out.attrs["lr"] = args.lr
        out.attrs["hidden"] = args.hidden
        modes = ("default", "original")
        if args.summary:
            modes = ("default",)
        elif args.bf16:
            modes = ("default", "bf16")
        for name in modes:
            run_mode(out, name, args, embeddings, labels, lengths)


if __name__ == "__main__":
    main()

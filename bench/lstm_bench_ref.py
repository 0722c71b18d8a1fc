#!/usr/bin/python3
"""The PyTorch side of bench/lstm_bench.sh: the sequence model of tests/ref/lstm_ref.py
(SeqModel, the plain module: every series has the same length, so packing changes nothing)
at the given shapes, on the threads of OMP_NUM_THREADS.

  lstm_bench_ref.py train|eval EMB HIDDEN BATCH STEPS ITERS

train: forward, the method's loss, backward and an Adam step per iteration; eval: forward
under no_grad. One warm-up iteration, then ITERS timed; prints one line
  torch MODE slices_per_s=R peak_rss_mib=M
"""
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "ref"))
from lstm_ref import SeqModel, method_loss, model_input  # noqa: E402


def main():
    mode, emb, hidden, batch, steps, iters = sys.argv[1], *map(int, sys.argv[2:7])
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    torch.manual_seed(1)
    model = SeqModel(emb, hidden)
    embeddings = torch.rand(batch, steps, emb)
    labels = (torch.rand(batch, steps, 6) < 0.1).float()
    lengths = [steps] * batch
    x = model_input(embeddings, lengths)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)

    start = 0.0
    for it in range(iters + 1):
        if it == 1:
            start = time.perf_counter()
        if mode == "eval":
            with torch.no_grad():
                model(x, embeddings)
            continue
        optimizer.zero_grad()
        loss = method_loss(model(x, embeddings), labels, lengths)
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("torch %s slices_per_s=%.2f peak_rss_mib=%.0f" % (mode, batch * steps * iters / seconds,
                                                           peak))


if __name__ == "__main__":
    main()

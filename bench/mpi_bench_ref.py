#!/usr/bin/python3
"""The PyTorch side of bench/mpi_bench.sh, with torch.distributed on the gloo backend (Debian's
torch has no MPI backend); processes on this host only: rendezvous through a file in WORKDIR,
transport over the loopback interface.

  mpi_bench_ref.py allreduce RANKS FLOATS ITERS WORKDIR
      sum FLOATS float32 values in place over RANKS processes (1 thread each), one untimed
      round first; prints the slowest rank's best and median seconds per call.
  mpi_bench_ref.py train RANKS MODEL SIZE BATCH ITERS WORKDIR
      training steps of torchvision's MODEL (6 outputs, the method's loss, Adam) on a global
      batch of BATCH random images: RANKS = 1 runs it with 2 threads as 2 micro-batches with
      gradients accumulated, RANKS = 2 as DistributedDataParallel, 1 thread and BATCH / 2
      images per rank (batch norm per rank in both). One untimed step first; prints
      images/s of the best step (the slowest rank's).
"""
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def join(rank, ranks, workdir):
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method="file://" + os.path.join(workdir, "rendezvous"),
                            rank=rank, world_size=ranks)


def allreduce_worker(rank, ranks, floats, iters, workdir, queue):
    torch.set_num_threads(1)
    join(rank, ranks, workdir)
    grads = (torch.arange(floats, dtype=torch.int64) + rank).remainder(97).float() * 1e-3
    seconds = []
    for it in range(iters + 1):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(grads)
        if it > 0:
            seconds.append(time.perf_counter() - start)
    seconds.sort()
    queue.put((seconds[0], seconds[len(seconds) // 2]))
    dist.destroy_process_group()


def train_worker(rank, ranks, model_name, size, batch, iters, workdir, queue):
    import torch.nn as nn
    import torchvision
    torch.set_num_threads(2 // ranks)
    torch.manual_seed(0)
    model = getattr(torchvision.models, model_name)(weights=None)
    model.fc = nn.Linear(model.fc.in_features, 6)
    model.train()
    if ranks > 1:
        join(rank, ranks, workdir)
        model = nn.parallel.DistributedDataParallel(model)
    micro = batch // 2
    x = torch.rand(micro, 3, size, size) * 2 - 1
    labels = (torch.arange(micro * 6).reshape(micro, 6) % 3 == 0).float()
    bce = nn.functional.binary_cross_entropy_with_logits
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    seconds = []
    for it in range(iters + 1):
        start = time.perf_counter()
        opt.zero_grad()
        for _ in range(2 // ranks):
            logits = model(x)
            loss = (6 * bce(logits, labels) + bce(logits[:, 5], labels[:, 5])) / 7 / 2
            loss.backward()
        opt.step()
        if it > 0:
            seconds.append(time.perf_counter() - start)
    queue.put(min(seconds))
    if ranks > 1:
        dist.destroy_process_group()


def run(worker, ranks, args):
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(worker, args=args + (queue,), nprocs=ranks)
    return [queue.get() for _ in range(ranks)]


def main():
    if sys.argv[1] == "allreduce":
        ranks, floats, iters, workdir = (int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]),
                                         sys.argv[5])
        times = run(allreduce_worker, ranks, (ranks, floats, iters, workdir))
        print("result side=torch kind=allreduce ranks=%d floats=%d mib=%.1f path=gloo "
              "best_s=%.4f median_s=%.4f" % (ranks, floats, floats * 4 / 1048576.0,
                                             max(t[0] for t in times),
                                             max(t[1] for t in times)))
    else:
        ranks, model, size, batch, iters, workdir = (int(sys.argv[2]), sys.argv[3],
                                                     int(sys.argv[4]), int(sys.argv[5]),
                                                     int(sys.argv[6]), sys.argv[7])
        step = max(run(train_worker, ranks, (ranks, model, size, batch, iters, workdir)))
        print("result side=torch kind=train ranks=%d threads=%d model=%s size=%d batch=%d "
              "images_per_s=%.3f" % (ranks, 2 // ranks, model, size, batch, batch / step))
    return 0


if __name__ == "__main__":
    sys.exit(main())

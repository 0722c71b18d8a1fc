"""PyTorch side of the GPU benchmark (tests/gpu/run.sh): ResNeXt training and eval steps on
the same GPU, with what PyTorch does best there (cuDNN autotuning; in bf16 autocast and
channels-last), and the model's FLOPs per image (2 per multiply-add, torch's FlopCounterMode).
--seq: the stage-5 sequence model instead (tests/ref/lstm_ref.py's SeqModel, cuDNN's
nn.LSTM), training and inference slices/s at the method's shapes, fp32 and bf16 autocast.

Prints lines "result side=torch ...", "seqresult side=torch ..." and "flops ...", read by
run.sh.
"""
import argparse
import os
import sys
import time
import types

import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode


def method_loss(logits, labels):
    """The method's loss (reference-method.md stage 3): (6 BCE(all) + BCE(column 5)) / 7."""
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    return (6 * bce(logits, labels) + bce(logits[:, 5], labels[:, 5])) / 7


def steps_per_second(step, iters, warmup=2):
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    torch.cuda.synchronize()
    return iters / (time.perf_counter() - start)


def flops_per_image(model, size, memory_format):
    """Training (forward + backward) and eval FLOPs of one image."""
    x = torch.randn(1, 3, size, size, device="cuda").to(memory_format=memory_format)
    labels = torch.zeros(1, 6, device="cuda")
    model.train()
    with FlopCounterMode(display=False) as counter:
        method_loss(model(x), labels).backward()
    train = counter.get_total_flops()
    model.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return train, counter.get_total_flops()


def seq_bench(iters, emb=2048, hidden=2048, steps=40, train_batch=4, eval_batch=16):
    """The sequence model as the engine's --seq-bench runs it: full-length series."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "ref"))
    try:
        import h5py  # noqa: F401  (lstm_ref.py's dump format; not needed here)
    except ImportError:
        sys.modules["h5py"] = types.ModuleType("h5py")
    from lstm_ref import SeqModel, method_loss as seq_loss, model_input

    torch.backends.cudnn.benchmark = True
    model = SeqModel(emb, hidden).cuda()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    for precision in ("fp32", "bf16"):
        bf16 = precision == "bf16"
        torch.backends.cudnn.allow_tf32 = bf16
        torch.backends.cuda.matmul.allow_tf32 = bf16
        for training, batch in ((False, eval_batch), (True, train_batch)):
            lengths = [steps] * batch
            embeddings = torch.randn(batch, steps, emb)
            x = model_input(embeddings, lengths).cuda()
            embeddings = embeddings.cuda()
            labels = (torch.rand(batch, steps, 6, device="cuda") > 0.5).float()

            def step():
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16), \
                        torch.set_grad_enabled(training):
                    logits = model(x, embeddings)
                    if not training:
                        return
                    loss = seq_loss(logits.float(), labels, lengths)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            model.train(training)
            rate = steps_per_second(step, iters, warmup=1) * batch * steps
            # Autocast may run cuDNN's LSTM in fp16 rather than bf16: say which it was.
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16), \
                    torch.no_grad():
                lstm_dtype = str(model.lstm1(x[:1])[0].dtype).replace("torch.", "")
            print("seqresult side=torch precision=%s batch=%d steps=%d iters=%d "
                  "%s_slices_per_s=%.1f lstm_dtype=%s"
                  % (precision, batch, steps, iters, "train" if training else "eval", rate,
                     lstm_dtype), flush=True)
    print("memory seqmodel side=torch peak_mib=%.0f"
          % (torch.cuda.max_memory_allocated() / 2**20), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="resnext101_32x8d")
    parser.add_argument("--size", type=int, default=480)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--flops", action="store_true", help="also count FLOPs per image")
    parser.add_argument("--seq", action="store_true",
                        help="the sequence model instead (both precisions, --iters)")
    args = parser.parse_args()
    if args.seq:
        seq_bench(args.iters)
        return

    torch.backends.cudnn.benchmark = True
    bf16 = args.precision == "bf16"
    # fp32 as the engine's fp32: no TF32 anywhere.
    torch.backends.cudnn.allow_tf32 = bf16
    torch.backends.cuda.matmul.allow_tf32 = bf16
    memory_format = torch.channels_last if bf16 else torch.contiguous_format

    model = getattr(torchvision.models, args.model)(num_classes=6).cuda()
    model = model.to(memory_format=memory_format)
    x = torch.randn(args.batch, 3, args.size, args.size, device="cuda")
    x = x.to(memory_format=memory_format)
    labels = (torch.rand(args.batch, 6, device="cuda") > 0.5).float()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4)

    if args.flops:
        train_flops, eval_flops = flops_per_image(model, args.size, memory_format)
        print("flops model=%s size=%d train_per_image=%.6e eval_per_image=%.6e"
              % (args.model, args.size, train_flops, eval_flops), flush=True)

    def train_step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = method_loss(model(x), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def eval_step():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            model(x)

    model.train()
    train = steps_per_second(train_step, args.iters)
    model.eval()
    evals = steps_per_second(eval_step, args.iters)
    peak = torch.cuda.max_memory_allocated() / 2**20
    print("result side=torch model=%s size=%d batch=%d precision=%s iters=%d "
          "train_images_per_s=%.2f eval_images_per_s=%.2f peak_mib=%.0f torch=%s cudnn=%s"
          % (args.model, args.size, args.batch, args.precision, args.iters,
             train * args.batch, evals * args.batch, peak, torch.__version__,
             torch.backends.cudnn.version()), flush=True)


if __name__ == "__main__":
    main()

"""Summarise tests/gpu/run.sh's benchmark lines: the engine against PyTorch on the same GPU
(ratios), and model FLOP utilisation against the 790 TFLOP/s a large bf16 matrix product
reaches on an H200 (FLOPs counted 2 per multiply-add by torch's FlopCounterMode)."""
import sys

PEAK = 790e12


def fields(line):
    return dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)


def main():
    results, flops, seq = {}, None, {}
    with open(sys.argv[1]) as f:
        for line in f:
            if line.startswith("seqresult "):
                r = fields(line)
                seq.setdefault((r["side"], r["precision"]), {}).update(r)
            elif line.startswith("result "):
                r = fields(line)
                results.setdefault((r["side"], r["precision"]), {}).update(r)
            elif line.startswith("flops "):
                flops = fields(line)
    print("== summary (images/s; engine 'bf16': bf16 NHWC convolutions, fp32 activations "
          "between layers, see common/nn/backend_cuda.cu)")
    for precision in ("fp32", "bf16"):
        ours = results.get(("ours", precision))
        torch = results.get(("torch", precision))
        for mode in ("train", "eval"):
            key = mode + "_images_per_s"
            a = float(ours[key]) if ours else float("nan")
            b = float(torch[key]) if torch else float("nan")
            line = "%-5s %-5s engine %8.2f  pytorch %8.2f  ratio %5.2f" % (
                precision, mode, a, b, a / b if b else float("nan"))
            if flops:
                per_image = float(flops[mode + "_per_image"])
                line += "  MFU engine %5.1f%%  pytorch %5.1f%%" % (
                    100 * a * per_image / PEAK, 100 * b * per_image / PEAK)
            print(line)
    if seq:
        print("== sequence model (slices/s; train batch 4, eval 16, 40 slices, 6144 inputs, "
              "hidden 2048; PyTorch: nn.LSTM on cuDNN, bf16 = autocast)")
        for precision in ("fp32", "bf16"):
            for mode in ("train", "eval"):
                key = mode + "_slices_per_s"
                a = float(seq.get(("ours", precision), {}).get(key, "nan"))
                b = float(seq.get(("torch", precision), {}).get(key, "nan"))
                print("%-5s %-5s engine %9.1f  pytorch %9.1f  ratio %5.2f" % (
                    precision, mode, a, b, a / b if b == b and b else float("nan")))
    if flops:
        print("FLOPs per image at %s px: train %.1f G, eval %.1f G" % (
            flops["size"], float(flops["train_per_image"]) / 1e9,
            float(flops["eval_per_image"]) / 1e9))


if __name__ == "__main__":
    main()

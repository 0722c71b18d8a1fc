"""Print the folders (colon-separated) that hold the CUDA libraries the engine's CUDA backend
loads (cudart 13, cuDNN 9, cuBLAS 13), and NVRTC's and NCCL's (the all-reduce benchmark)
when there are: PyTorch's nvidia wheels first, then torch's own folder, then the toolkit."""
import glob
import os
import sys

WANTED = ("libcudart.so.13", "libcudnn.so.9", "libcublas.so.13", "libcublasLt.so.13")
# nvrtc: cuDNN compiles some of its engines at run time and looks for it by name.
OPTIONAL = ("libnccl.so.2", "libnvrtc.so.13")


def roots():
    try:
        import nvidia  # the wheels' namespace package

        yield from nvidia.__path__
    except ImportError:
        pass
    try:
        import torch  # builds that keep the libraries beside torch's own

        yield os.path.join(os.path.dirname(torch.__file__), "lib")
    except ImportError:
        pass
    yield os.environ.get("CUDA_HOME", "/usr/local/cuda")


def main():
    folders, missing = [], []
    for name in WANTED + OPTIONAL:
        hits = [p for root in roots() for p in glob.glob(os.path.join(root, "**", name),
                                                          recursive=True)]
        if not hits:
            if name in WANTED:
                missing.append(name)
            continue
        folder = os.path.dirname(hits[0])
        if folder not in folders:
            folders.append(folder)
    if missing:
        print("cuda_libs: not found: %s" % " ".join(missing), file=sys.stderr)
    print(":".join(folders))


if __name__ == "__main__":
    main()

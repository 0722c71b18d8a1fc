"""Print the folders (colon-separated) that hold the CUDA libraries the engine's CUDA backend
loads (cudart 13, cuDNN 9, cuBLAS 13): PyTorch's nvidia wheels first, then torch's own
folder, then the toolkit."""
import glob
import os
import sys

WANTED = ("libcudart.so.13", "libcudnn.so.9", "libcublas.so.13", "libcublasLt.so.13")


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
    for name in WANTED:
        hits = [p for root in roots() for p in glob.glob(os.path.join(root, "**", name),
                                                          recursive=True)]
        if not hits:
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

#!/usr/bin/python3
"""bin/pth2h5 on hand-made and damaged checkpoints: what torch does not write, and bad files.

Hand-made (Python's pickle and zipfile, with the ids and rebuild calls torch uses):
  - zip archives with deflated entries, the pickle in protocols 2 and 5 (FRAME, MEMOIZE,
    STACK_GLOBAL, BINUNICODE8 ...), a state_dict beside an object of a class that exists
    nowhere (an inert placeholder), tensors sharing a storage; values equal numpy's bit for
    bit;
  - a whole model (torch.save(model), both serializations) carrying extra GLOBALs in its
    module tree (an object of an unknown class and a functools.partial as attributes): the
    tensors equal the model's state_dict.
Damaged, each must exit 3 with a message naming the file and what was found, and write
nothing: a cut zip, a cut older-format pickle, cut storages, an unknown opcode, a huge string
length, a huge memo index, a huge storage size, a storage shorter than its id declares, a
storage element count that differs, a flipped byte (CRC-32), 5 million None opcodes, a
quantized and a sparse tensor, a complex storage, a module tree that contains itself, one sharing a submodule exponentially
often, two names colliding once 'module.' is stripped, a text file. Then 160 seeded random
mutations (bytes replaced, flipped, cut or inserted in the older format's pickles, in a zip's
data.pkl with its CRC made right, in a zip's central directory): each exits 0 or 3, never
anything else (a crash, a sanitizer report). Runs under a 3 GiB address
space limit (except under AddressSanitizer), so that an allocation sized by the file would
fail loudly instead.
"""
import collections
import functools
import io
import os
import pickle
import resource
import shutil
import subprocess
import sys
import types
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "ref"))

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import testlib  # noqa: E402
from testlib import check  # noqa: E402

torch = testlib.import_or_skip("torch")

WORK = testlib.WORK
BIN = testlib.BIN
PY = os.environ.get("PY", "/usr/bin/python3")


def limit_memory():
    # AddressSanitizer reserves terabytes of address space: no limit under it (make
    # test-asan sets ASAN_OPTIONS), where it reports oversized allocations itself.
    if "ASAN_OPTIONS" not in os.environ:
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))


def pth2h5(*args):
    return subprocess.run([os.path.join(BIN, "pth2h5"), "-q"] + [str(a) for a in args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          preexec_fn=limit_memory)


# ---- a pickler that writes what torch writes, without torch's own save ----------------------

class Storage:
    def __init__(self, key, storage_type, numel):
        self.key, self.type, self.numel = key, storage_type, numel


class Tensor:
    """Pickles as torch's _rebuild_tensor_v2(storage, offset, size, stride, ...)."""

    def __init__(self, storage, offset, size, stride, rebuild=None):
        self.args = (storage, offset, tuple(size), tuple(stride), False,
                     collections.OrderedDict())
        self.rebuild = rebuild or torch._utils._rebuild_tensor_v2

    def __reduce__(self):
        return (self.rebuild, self.args)


class TorchLikePickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.type, obj.key, "cpu", obj.numel)
        return None


def dumps(obj, protocol):
    buf = io.BytesIO()
    TorchLikePickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


def write_zip(path, pkl, storages, deflate=True):
    """storages: key -> bytes."""
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pkl, compress_type=method)
        z.writestr("archive/byteorder", "little", compress_type=method)
        for key, data in storages.items():
            z.writestr("archive/data/" + key, data, compress_type=method)
        z.writestr("archive/version", "3\n")


# A module named nowhere: its classes pickle by reference and cannot be imported back.
ghost = types.ModuleType("ghost_module_of_old_torch")
sys.modules[ghost.__name__] = ghost


class Placeholder:
    pass


Placeholder.__module__ = ghost.__name__
Placeholder.__qualname__ = "Placeholder"
ghost.Placeholder = Placeholder


def handmade(protocol):
    """A checkpoint dict with a state_dict of three tensors on two storages; the arrays."""
    weight = np.arange(24, dtype=np.float32).reshape(4, 6) / 7
    counts = np.array([3, -1, 1 << 40], dtype=np.int64)
    s0 = Storage("0", torch.FloatStorage, 24)
    s1 = Storage("1", torch.LongStorage, 3)
    sd = collections.OrderedDict()
    sd["w"] = Tensor(s0, 0, (4, 6), (6, 1))
    sd["w_t"] = Tensor(s0, 0, (6, 4), (1, 6))           # the transpose, same storage
    sd["row2"] = Tensor(s0, 12, (6,), (1,))             # an offset view, same storage
    sd["n"] = Tensor(s1, 0, (3,), (1,))
    obj = {"state_dict": sd, "extra": Placeholder(), "epoch": 2, "lr": 0.5}
    expect = {"w": weight, "w_t": weight.T, "row2": weight[2], "n": counts}
    return dumps(obj, protocol), {"0": weight.tobytes(), "1": counts.tobytes()}, expect


def compare(label, h5path, expect):
    with h5py.File(h5path, "r") as f:
        g = f["state_dict"]
        ok = list(g) == list(expect) and all(
            g[k].dtype == v.dtype and np.array_equal(g[k][()], v) for k, v in expect.items())
        check(ok, f"{label}: {len(expect)} tensors equal numpy's ({list(g)})")


def test_handmade():
    for protocol in (2, 5):
        pkl, storages, expect = handmade(protocol)
        src = os.path.join(WORK, f"hand_p{protocol}.pth")
        write_zip(src, pkl, storages, deflate=True)
        dst = os.path.join(WORK, f"hand_p{protocol}.h5")
        proc = pth2h5("-o", dst, src)
        check(proc.returncode == 0, f"hand-made protocol {protocol}, deflated: exit "
              f"{proc.returncode} {proc.stderr.strip()[-200:]}")
        if proc.returncode == 0:
            compare(f"hand-made protocol {protocol}", dst, expect)


def test_module_with_ghosts():
    import resnext_ref
    torch.manual_seed(5)
    model = resnext_ref.build("tiny", 3).eval()
    ref = model.state_dict()
    model.note = Placeholder()
    model.layer2[1].hook = functools.partial(print, "x")
    for suffix, kw in (("", {}), ("_legacy", {"_use_new_zipfile_serialization": False})):
        src = os.path.join(WORK, f"ghost{suffix}.pth")
        torch.save(model, src, **kw)
        dst = os.path.join(WORK, f"ghost{suffix}.h5")
        proc = pth2h5("-o", dst, "--arch", "tiny", src)
        check(proc.returncode == 0, f"model with unknown GLOBALs in its tree{suffix}: exit "
              f"{proc.returncode} {proc.stderr.strip()[-200:]}")
        if proc.returncode == 0:
            with h5py.File(dst, "r") as f:
                g = f["state_dict"]
                same = list(g) == list(ref) and all(
                    np.array_equal(g[k][()], v.numpy()) for k, v in ref.items())
                check(same, f"model with unknown GLOBALs{suffix}: {len(ref)} tensors equal")


# ---- damaged files -----------------------------------------------------------------------------

def expect_refused(label, path, needle):
    dst = os.path.join(WORK, "refused", os.path.basename(path) + ".h5")
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    proc = pth2h5("-o", dst, path)
    msg = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    left = os.listdir(os.path.dirname(dst))
    check(proc.returncode == 3 and path in msg and needle in msg and not left,
          f"{label}: exit {proc.returncode}, '{msg.split(path + ': ', 1)[-1][:110]}'"
          f"{', left ' + str(left) if left else ''}")


def variant(name, data):
    path = os.path.join(WORK, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def test_damaged():
    fix = os.path.join(WORK, "fixtures")
    subprocess.run([PY, os.path.join(HERE, "..", "ref", "pth_make.py"), fix], check=True)
    with open(os.path.join(fix, "sd.pth"), "rb") as f:
        zipped = f.read()
    with open(os.path.join(fix, "sd_legacy.pth"), "rb") as f:
        legacy = f.read()

    expect_refused("zip cut in half", variant("cut.pth", zipped[:len(zipped) // 2]),
                   "central directory")
    expect_refused("older format cut inside the pickle", variant("cutpkl.pth", legacy[:900]),
                   "truncated")
    expect_refused("older format cut inside the storages",
                   variant("cutdata.pth", legacy[:-1000]), "truncated")

    # The element count before the first storage, made larger: skip the five pickles with
    # an unpickler that builds nothing.
    class Skipper(pickle.Unpickler):
        def find_class(self, module, name):
            if name == "OrderedDict":
                return collections.OrderedDict
            return lambda *args, **kwargs: None

        def persistent_load(self, pid):
            return None

    stream = io.BytesIO(legacy)
    for _ in range(5):
        Skipper(stream).load()
    count_at = stream.tell()
    count = int.from_bytes(legacy[count_at:count_at + 8], "little")
    bad = legacy[:count_at] + (count + 1).to_bytes(8, "little") + legacy[count_at + 8:]
    expect_refused("storage element count differs from its id", variant("count.pth", bad),
                   "size mismatch")

    # A flipped byte in a stored tensor of the archive.
    info = zipfile.ZipFile(io.BytesIO(zipped)).getinfo("sd/data/0")
    local = info.header_offset
    at = (local + 30 + int.from_bytes(zipped[local + 26:local + 28], "little") +
          int.from_bytes(zipped[local + 28:local + 30], "little") + 5)
    flipped = zipped[:at] + bytes([zipped[at] ^ 0x40]) + zipped[at + 1:]
    expect_refused("flipped byte in a storage", variant("crc.pth", flipped), "CRC")

    _, storages, _ = handmade(2)

    def hand(name, pkl, stores=storages):
        path = os.path.join(WORK, name)
        write_zip(path, pkl, stores, deflate=False)
        return path

    good = handmade(2)[0]
    expect_refused("unknown opcode", hand("opcode.pth", good[:-1] + b"\xff."), "opcode 0xff")
    expect_refused("huge string length",
                   hand("hugestr.pth", b"\x80\x05\x8d" + (1 << 62).to_bytes(8, "little") +
                        b"abc."), "declared length")
    expect_refused("huge memo index",
                   hand("memo.pth", b"\x80\x02N" + b"r\xff\xff\xff\xff."), "memo index")
    expect_refused("object bomb (5 million one-byte None opcodes)",
                   hand("nones.pth", b"\x80\x02" + b"N" * 5000000 + b"."), "objects")
    expect_refused("MARK nesting bomb", hand("marks.pth", b"\x80\x02" + b"(" * 200000 + b"N."),
                   "MARKs nested")

    s_huge = Storage("0", torch.FloatStorage, 1 << 60)
    expect_refused("huge storage size",
                   hand("hugestore.pth", dumps({"w": Tensor(s_huge, 0, (4,), (1,))}, 2)),
                   "more than the file holds")
    s_short = Storage("0", torch.FloatStorage, 30)
    expect_refused("storage shorter than its id",
                   hand("short.pth", dumps({"w": Tensor(s_short, 0, (4,), (1,))}, 2)),
                   "size mismatch")
    s_ok = Storage("0", torch.FloatStorage, 24)
    expect_refused("view reaching past its storage",
                   hand("reach.pth", dumps({"w": Tensor(s_ok, 20, (2, 3), (3, 1))}, 2)),
                   "size mismatch")
    expect_refused("quantized tensor",
                   hand("quant.pth", dumps({"w": Tensor(s_ok, 0, (4,), (1,),
                                                        torch._utils._rebuild_qtensor)}, 2)),
                   "_rebuild_qtensor")
    expect_refused("sparse tensor",
                   hand("sparse.pth",
                        dumps({"w": Tensor(s_ok, 0, (4,), (1,),
                                           torch._utils._rebuild_sparse_tensor)}, 2)),
                   "_rebuild_sparse_tensor")
    s_cplx = Storage("0", torch.ComplexFloatStorage, 12)
    expect_refused("complex storage",
                   hand("complex.pth", dumps({"w": Tensor(s_cplx, 0, (4,), (1,))}, 2)),
                   "ComplexFloatStorage")

    # A module whose child is itself: the walk stops instead of recursing forever.
    loop = torch.nn.Module()
    loop._parameters["p"] = None
    loop.__dict__["_modules"]["self"] = loop
    expect_refused("module tree containing itself", hand("loop.pth", dumps(loop, 2)), "deeper")

    # A module shared twice at each of 40 levels: 2^41 paths through the tree.
    shared = torch.nn.Module()
    for _ in range(40):
        parent = torch.nn.Module()
        parent.__dict__["_modules"]["a"] = shared
        parent.__dict__["_modules"]["b"] = shared
        shared = parent
    expect_refused("module shared exponentially often", hand("dag.pth", dumps(shared, 2)),
                   "more than 1000000 modules")
    expect_refused("names colliding once 'module.' is stripped",
                   hand("collide.pth", dumps({"module.w": Tensor(s_ok, 0, (4,), (1,)),
                                              "w": Tensor(s_ok, 4, (4,), (1,))}, 2)),
                   "two tensors named w")

    expect_refused("a text file", variant("text.pth", b"hello, not a checkpoint\n" * 10),
                   "not a PyTorch checkpoint")


def mutate(rng, data, lo, hi):
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(lo, hi)
        kind = rng.randrange(4)
        if kind == 0:
            data[at] = rng.randrange(256)
        elif kind == 1:
            data[at] ^= 1 << rng.randrange(8)
        elif kind == 2:
            del data[at:at + rng.randint(1, 8)]
        else:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
        hi = min(hi, len(data))
    return bytes(data)


def test_mutations(count=160):
    import random
    rng = random.Random(20261204)
    fix = os.path.join(WORK, "fixtures")
    legacy = [open(os.path.join(fix, n), "rb").read()
              for n in ("mixed_legacy.pth", "module_legacy.pth")]
    with zipfile.ZipFile(os.path.join(fix, "mixed.pth")) as z:
        entries = {i.filename: z.read(i.filename) for i in z.infolist()}
    with open(os.path.join(fix, "mixed.pth"), "rb") as f:
        zipped = f.read()
    path, dst = os.path.join(WORK, "mutant.pth"), os.path.join(WORK, "mutant.h5")
    codes, bad = {}, []
    for i in range(count):
        kind = i % 4
        if kind < 2:
            src = legacy[kind]
            data = mutate(rng, src, 0, min(len(src), 4000))
        elif kind == 2:
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as out:
                for name, value in entries.items():
                    if name.endswith("/data.pkl"):
                        value = mutate(rng, value, 0, len(value))
                    out.writestr(name, value, compress_type=zipfile.ZIP_DEFLATED
                                 if rng.random() < 0.3 else zipfile.ZIP_STORED)
            data = buf.getvalue()
        else:
            data = mutate(rng, zipped, max(0, len(zipped) - 1500), len(zipped))
        with open(path, "wb") as f:
            f.write(data)
        proc = pth2h5("-o", dst, path)
        codes[proc.returncode] = codes.get(proc.returncode, 0) + 1
        if proc.returncode not in (0, 3):
            keep = os.path.join(WORK, f"mutant{i}.pth")
            shutil.copy(path, keep)
            bad.append(f"{keep}: exit {proc.returncode} {proc.stderr[-300:]}")
        if os.path.exists(dst):
            os.remove(dst)
    check(not bad, f"{count} mutated files: exit codes {dict(sorted(codes.items()))}"
          f"{'; ' + bad[0] if bad else ''}")


def main():
    test_handmade()
    test_module_with_ghosts()
    test_damaged()
    test_mutations()
    testlib.finish("pth2h5 damaged and hand-made")


if __name__ == "__main__":
    main()

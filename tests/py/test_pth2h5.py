#!/usr/bin/python3
"""bin/pth2h5 on checkpoints written by torch (tests/ref/pth_make.py), read back with h5py.

Each fixture in both serializations (zip archive and the older stream): the tiny ResNeXt's
state_dict, the same model pickled whole, a dict of special tensors (float16, bfloat16,
float64, the integer types, bool, transposed, strided slice, two names on one storage, scalar,
empty), a DataParallel 'module.' prefix, a checkpoint nesting the state_dict beside an
optimizer, and a protocol 4 pickle. For every file: the names in torch's state_dict order,
every tensor's shape and dtype, and its values equal to torch.load's bit for bit (float16
and bfloat16 compared as their 16-bit patterns). Also: the root attributes, --list, --arch
(a match, missing and unexpected keys refused with exit 3 unless allowed, a size mismatch),
--key, --keep-prefix. Finally the engine itself: build/tests/test_nn_checkpoint --eval loads
the imported tiny ResNeXt strictly (nn_ckpt_load) and its eval logits and embedding equal
torchvision's on the same weights (relative L2 and max abs / max |ref| <= 1e-4, the
tolerance of test_nn_resnext), from the fp32 weights and from their bfloat16 copy.
The reverse (--to-pth): the special-tensor dict and the tiny model's import, and the engine's
own fp32 and bf16 checkpoints (test_nn_checkpoint --export), written back as .pth files that
torch.load reads with weights_only=True: names in order, dtypes, shapes and bits equal to the
HDF5 file's; the tiny model loads them strictly; pth2h5 reads them back identically. A file
that is not HDF5, or an HDF5 file without state_dict, exits 3.
"""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "ref"))

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import testlib  # noqa: E402
from testlib import check  # noqa: E402

torch = testlib.import_or_skip("torch")

WORK = testlib.WORK
FIX = os.path.join(WORK, "fixtures")
PY = os.environ.get("PY", "/usr/bin/python3")


def make_fixtures():
    subprocess.run([PY, os.path.join(HERE, "..", "ref", "pth_make.py"), FIX], check=True)


def torch_state(path, key=None):
    """What torch itself reads: the state_dict as an ordered list of (name, tensor)."""
    obj = torch.load(path, map_location="cpu")
    if isinstance(obj, torch.nn.Module):
        return list(obj.state_dict().items())
    if key:
        obj = obj[key]
    return list(obj.items())


def bits(array):
    """The raw bit patterns of a numpy array, for exact comparison."""
    array = np.ascontiguousarray(array)
    if array.dtype.kind == "f":
        return array.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[array.dtype.itemsize])
    return array


def expected_numpy(tensor):
    """torch tensor -> (numpy array as h5py presents it, hdf5 item size)."""
    if tensor.dtype == torch.bfloat16:
        return tensor.float().numpy(), 2  # h5py widens bf16 to float32, exactly
    if tensor.dtype == torch.bool:
        return tensor.numpy().astype(np.uint8), 1
    return tensor.numpy(), tensor.element_size()


def compare_file(label, h5path, ref_items, strip_prefix=True):
    with h5py.File(h5path, "r") as f:
        group = f["state_dict"]
        names = list(group)
        want = [(k[7:] if strip_prefix and k.startswith("module.") else k) for k, _ in ref_items]
        check(names == want, f"{label}: {len(names)} names in torch's order")
        bad = []
        for (name, tensor) in zip(want, [t for _, t in ref_items]):
            if name not in group:
                bad.append(name + " absent")
                continue
            ds = group[name]
            ref, itemsize = expected_numpy(tensor)
            got = ds[()]
            if ds.shape != tuple(tensor.shape):
                bad.append(f"{name} shape {ds.shape} vs {tuple(tensor.shape)}")
            elif ds.id.get_type().get_size() != itemsize:
                bad.append(f"{name} item size {ds.id.get_type().get_size()} vs {itemsize}")
            elif np.asarray(got).dtype != ref.dtype:
                bad.append(f"{name} dtype {np.asarray(got).dtype} vs {ref.dtype}")
            elif not np.array_equal(bits(np.asarray(got)), bits(ref)):
                bad.append(f"{name} values differ")
        check(not bad, f"{label}: every tensor bit-identical to torch.load "
              f"({len(want)} tensors){': ' + '; '.join(bad[:5]) if bad else ''}")
        return f


def convert(src, dst, *extra):
    proc = testlib.run("pth2h5", "-o", dst, *extra, src)
    check(proc.returncode == 0, f"pth2h5 {os.path.basename(src)} {' '.join(extra)}: exit "
          f"{proc.returncode} {proc.stderr.strip()[-300:]}")
    return proc.returncode == 0


TOL = 1e-4


def rel_errors(got, ref):
    got = np.asarray(got, dtype=np.float64).ravel()
    ref = np.asarray(ref, dtype=np.float64).ravel()
    rel = np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30)
    return rel, np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30)


def engine_forward():
    """Imported weights through the engine's loader and forward pass vs torchvision."""
    import resnext_ref
    tool = os.path.join(os.environ.get("BUILD", os.path.join(HERE, "..", "..", "build")),
                        "tests", "test_nn_checkpoint")
    if not os.access(tool, os.X_OK):
        check(False, f"{tool} is not built (run make)")
        return
    torch.set_num_threads(1)
    x = np.random.default_rng(11).standard_normal((2, 3, 64, 64)).astype(np.float32)
    inputs = os.path.join(WORK, "input.h5")
    with h5py.File(inputs, "w") as f:
        f["input"] = x
    for name in ("sd_legacy", "sd_bf16"):
        src = os.path.join(FIX, name + ".pth")
        ckpt = os.path.join(WORK, name + "_engine.h5")
        if not convert(src, ckpt, "--arch", "tiny"):
            continue
        model = resnext_ref.build("tiny", 6)
        sd = torch.load(src, map_location="cpu")
        model.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in sd.items()})
        model.eval()
        captured = {}
        model.fc.register_forward_hook(lambda m, i, o: captured.__setitem__("e", i[0]))
        with torch.no_grad():
            logits = model(torch.from_numpy(x)).numpy()
        out = os.path.join(WORK, name + "_out.h5")
        proc = subprocess.run([tool, "--eval", ckpt, inputs, out], capture_output=True,
                              text=True)
        check(proc.returncode == 0, f"{name}: the engine loads the import strictly (exit "
              f"{proc.returncode}) {proc.stderr.strip()[-300:]}")
        if proc.returncode != 0:
            continue
        with h5py.File(out, "r") as r:
            for what, got, ref in (("logits", r["logits"][()], logits),
                                   ("embedding", r["embedding"][()], captured["e"].numpy())):
                rel, mx = rel_errors(got, ref)
                check(rel <= TOL and mx <= TOL, f"{name}: engine {what} vs torchvision: rel_l2 "
                      f"{rel:.2e}, max_abs/max {mx:.2e} (tol {TOL:.0e})")


def h5_items(path):
    """(name, numpy array as stored, is bool) of an HDF5 checkpoint's state_dict, in order."""
    with h5py.File(path, "r") as f:
        out = []
        for name, ds in f["state_dict"].items():
            size = ds.id.get_type().get_size()
            raw = ds[()]
            if ds.dtype.kind == "f" and size == 2 and ds.dtype.itemsize == 4:
                raw = (np.asarray(raw, np.float32).view(np.uint32) >> 16).astype(np.uint16)
                kind = "bf16"
            else:
                kind = "bool" if ds.attrs.get("torch_dtype") in (b"bool", "bool") else ""
            out.append((name, np.asarray(raw), kind))
        return out


def same_as_h5(label, pth, h5path):
    """torch.load(pth, weights_only=True) against the HDF5 state_dict, bit for bit."""
    try:
        sd = torch.load(pth, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (any failure of torch.load is the finding)
        check(False, f"{label}: torch.load(weights_only=True) fails: {err}")
        return None
    items = h5_items(h5path)
    check(list(sd) == [n for n, _, _ in items], f"{label}: {len(sd)} names in the file's order")
    bad = []
    for name, raw, kind in items:
        t = sd.get(name)
        if t is None or tuple(t.shape) != raw.shape or not t.is_contiguous():
            bad.append(f"{name} shape")
        elif kind == "bf16":
            if t.dtype != torch.bfloat16 or not np.array_equal(
                    t.view(torch.int16).numpy().view(np.uint16), raw):
                bad.append(f"{name} bf16 bits")
        elif kind == "bool":
            if t.dtype != torch.bool or not np.array_equal(t.numpy().astype(np.uint8), raw):
                bad.append(f"{name} bool")
        elif t.numpy().dtype != raw.dtype or not np.array_equal(bits(t.numpy()), bits(raw)):
            bad.append(f"{name} {t.numpy().dtype} vs {raw.dtype}")
    check(not bad, f"{label}: every tensor bit-identical to the HDF5 file"
          f"{': ' + '; '.join(bad[:4]) if bad else ''}")
    return sd


def reverse():
    import resnext_ref
    export = os.path.join(WORK, "export")
    tool = os.path.join(os.environ.get("BUILD", os.path.join(HERE, "..", "..", "build")),
                        "tests", "test_nn_checkpoint")
    subprocess.run([tool, "--export", export], capture_output=True, check=False)
    sources = [("mixed", os.path.join(WORK, "mixed.h5")),
               ("tiny import", os.path.join(WORK, "sd_legacy_engine.h5")),
               ("engine fp32", os.path.join(export, "tiny.h5")),
               ("engine bf16", os.path.join(export, "tiny_bf16.h5"))]
    for label, h5path in sources:
        if not os.path.exists(h5path):
            check(False, f"{label}: {h5path} was not written")
            continue
        pth = os.path.join(WORK, "back_" + label.replace(" ", "_") + ".pth")
        proc = testlib.run("pth2h5", "--to-pth", "-o", pth, h5path)
        check(proc.returncode == 0, f"--to-pth {label}: exit {proc.returncode} "
              f"{proc.stderr.strip()[-300:]}")
        if proc.returncode != 0:
            continue
        sd = same_as_h5(f"--to-pth {label}", pth, h5path)
        if sd is not None and label != "mixed":
            model = resnext_ref.build("tiny", 6)
            try:
                model.load_state_dict({k: v.float() if v.is_floating_point() else v
                                       for k, v in sd.items()}, strict=True)
                check(True, f"--to-pth {label}: torchvision's tiny model loads it strictly")
            except RuntimeError as err:
                check(False, f"--to-pth {label}: strict load fails: {str(err)[:300]}")
        again = os.path.join(WORK, "again_" + label.replace(" ", "_") + ".h5")
        if convert(pth, again):
            a, b = h5_items(h5path), h5_items(again)
            check(len(a) == len(b) and all(
                x[0] == y[0] and x[2] == y[2] and np.array_equal(bits(x[1]), bits(y[1]))
                for x, y in zip(a, b)), f"--to-pth {label}: pth2h5 reads it back identically")
    bad = os.path.join(WORK, "bad_back.pth")
    proc = testlib.run("pth2h5", "--to-pth", "-o", bad, os.path.join(FIX, "sd.pth"))
    check(proc.returncode == 3 and not os.path.exists(bad),
          f"--to-pth on a .pth (not HDF5): exit {proc.returncode}")
    with h5py.File(os.path.join(WORK, "nostate.h5"), "w") as f:
        f["x"] = np.zeros(3)
    proc = testlib.run("pth2h5", "--to-pth", "-o", bad, os.path.join(WORK, "nostate.h5"))
    check(proc.returncode == 3 and "no state_dict" in proc.stderr and not os.path.exists(bad),
          f"--to-pth on HDF5 without state_dict: exit {proc.returncode}")


def main():
    make_fixtures()
    cases = [("sd", None), ("module", None), ("mixed", None), ("dp", None),
             ("nested", "state_dict"), ("sd_bf16", None)]
    for name, key in cases:
        for suffix in ("", "_legacy"):
            src = os.path.join(FIX, name + suffix + ".pth")
            dst = os.path.join(WORK, name + suffix + ".h5")
            if convert(src, dst):
                compare_file(name + suffix, dst, torch_state(src, key))
    src = os.path.join(FIX, "p4.pth")
    if convert(src, os.path.join(WORK, "p4.h5")):
        compare_file("p4 (pickle protocol 4)", os.path.join(WORK, "p4.h5"), torch_state(src))

    # Attributes and the architecture group.
    src = os.path.join(FIX, "module_legacy.pth")
    dst = os.path.join(WORK, "arch.h5")
    if convert(src, dst, "--arch", "tiny"):
        with h5py.File(dst, "r") as f:
            a = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
            check(a.get("format") == "ichpipe-nn-checkpoint" and a.get("format_version") == 1
                  and a.get("model") == "tiny" and a.get("storage") == "fp32",
                  f"attributes format/version/model/storage: {a.get('format')} "
                  f"{a.get('format_version')} {a.get('model')} {a.get('storage')}")
            check(a.get("source_file") == src and a.get("source_format") == "legacy" and
                  a.get("source_kind") == "module",
                  f"source attributes: {a.get('source_format')} {a.get('source_kind')}")
            arch = dict(f["architecture"].attrs)
            check(list(arch["layers"]) == [2, 2, 2, 2] and arch["groups"] == 4 and
                  arch["width_per_group"] == 8 and arch["base"] == 16 and
                  arch["num_outputs"] == 6 and arch["embed_dim"] == 512,
                  f"architecture {dict((k, np.asarray(v).tolist()) for k, v in arch.items())}")
    with h5py.File(os.path.join(WORK, "mixed.h5"), "r") as f:
        check(f.attrs["storage"] in (b"mixed", "mixed"), "mixed dtypes: storage = mixed")
        t = f["state_dict/bf16"].id.get_type()
        check(t.get_size() == 2 and t.get_fields() == (15, 7, 8, 0, 7) and t.get_ebias() == 127,
              f"bf16 stored as the engine's type: fields {t.get_fields()}")
        check(f["state_dict/bool"].attrs.get("torch_dtype") in (b"bool", "bool"),
              "bool stored as uint8 marked torch_dtype=bool")

    # --list
    proc = testlib.run("pth2h5", "--list", os.path.join(FIX, "mixed.pth"))
    lines = proc.stdout.splitlines()
    check(proc.returncode == 0 and "half\tfloat16\t[3, 5]" in lines and
          "scalar\tfloat32\t[]" in lines and "transposed\tfloat32\t[10, 6]" in lines,
          f"--list: {len(lines)} lines, e.g. {lines[:2]}")

    # --arch refusals and allowances.
    bad = os.path.join(WORK, "refused.h5")
    proc = testlib.run("pth2h5", "--arch", "tiny", "-o", bad, os.path.join(FIX, "mixed.pth"))
    check(proc.returncode == 3 and "missing keys (176)" in proc.stderr and
          "unexpected keys (16)" in proc.stderr and not os.path.exists(bad),
          f"--arch tiny on the mixed dict: exit {proc.returncode}, lists missing and "
          "unexpected keys, writes nothing")
    proc = testlib.run("pth2h5", "--arch", "resnext50_32x4d", "-o", bad,
                       os.path.join(FIX, "sd.pth"))
    check(proc.returncode == 3 and "size mismatch for conv1.weight: shape [16, 3, 7, 7] in the "
          "checkpoint, [64, 3, 7, 7] in the model" in proc.stderr and not os.path.exists(bad),
          f"--arch resnext50_32x4d on tiny weights: exit {proc.returncode}, size mismatch named")
    proc = testlib.run("pth2h5", "--arch", "tiny", "--allow-missing", "--allow-unexpected",
                       "-o", bad, os.path.join(FIX, "mixed.pth"))
    check(proc.returncode == 0 and os.path.exists(bad),
          f"--allow-missing --allow-unexpected imports anyway: exit {proc.returncode}")

    # --key and --keep-prefix.
    kp = os.path.join(WORK, "keep.h5")
    if convert(os.path.join(FIX, "dp.pth"), kp, "--keep-prefix"):
        with h5py.File(kp, "r") as f:
            check(all(n.startswith("module.") for n in f["state_dict"]),
                  "--keep-prefix keeps 'module.'")
    opt = os.path.join(WORK, "opt.h5")
    proc = testlib.run("pth2h5", "--key", "optimizer", "-o", opt,
                       os.path.join(FIX, "nested.pth"))
    check(proc.returncode == 3 and "neither a state_dict nor a module" in proc.stderr,
          f"--key optimizer (not a state_dict): exit {proc.returncode}")
    proc = testlib.run("pth2h5", "--key", "nope", "-o", opt, os.path.join(FIX, "nested.pth"))
    check(proc.returncode == 3 and "'state_dict'" in proc.stderr,
          f"--key nope: exit {proc.returncode}, lists the keys")
    engine_forward()
    reverse()
    testlib.finish("pth2h5")


if __name__ == "__main__":
    main()

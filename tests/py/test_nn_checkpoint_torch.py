#!/usr/bin/python3
"""Engine checkpoints (common/nn/checkpoint.c) as h5py and torch see them, both ways.

C -> torch: build/tests/test_nn_checkpoint --export trains the "tiny" ResNeXt 2 Adam steps on
batches drawn from the engine RNG and writes tiny.h5 (fp32), tiny_bf16.h5 and expect.h5.
  - attributes, architecture, RNG state; state_dict keys in torch's state_dict order;
  - torchvision-structured modules (tests/ref/resnext_ref.py) load state_dict strictly, every
    tensor bit-identical to the file; their eval logits and embedding equal the engine's
    (relative L2 and max abs / max |ref| <= 1e-4, the tolerance of test_nn_resnext);
  - the Adam moments sit under the right names: torch.optim.Adam run from the same initial
    weights on the same batches gives the same exp_avg / exp_avg_sq (<= 1e-4), running
    statistics, num_batches_tracked and step;
  - the RNG: an independent Python xoshiro256** / splitmix64 gives the same stream, the same
    batches and the same saved state;
  - bf16: the stored HDF5 type (sign 15, exponent 7+8, mantissa 0+7, bias 127); every value
    h5py reads equals torch's round-to-nearest-even bfloat16 of the fp32 value, bit for bit.
torch -> C: checkpoints written here with plain h5py (the import path for other weights):
  - strict: the engine's logits and embedding equal torch's (<= 1e-4);
  - a 10-output head: strict loading exits 3 naming the size mismatch; non-strict loads the
    rest and its embedding equals torch's.
"""
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "ref"))

try:
    import h5py
    import numpy as np
    import torch
    import torchvision  # noqa: F401 (resnext_ref needs it)
except ImportError as err:
    print(f"skip: python3 lacks h5py, numpy, torch or torchvision ({err})")
    sys.exit(77)

import nn_hashinit  # noqa: E402
import resnext_ref  # noqa: E402

TOL = 1e-4
M64 = (1 << 64) - 1
failures = []


def check(ok, what):
    print(("ok    " if ok else "FAIL  ") + what)
    if not ok:
        failures.append(what)


def compare(name, got, ref, tol=TOL):
    """Relative L2 error and max abs error / max |ref|, both within tol."""
    got = np.asarray(got, dtype=np.float64).reshape(-1)
    ref = np.asarray(ref, dtype=np.float64).reshape(-1)
    scale = max(np.linalg.norm(ref), 1e-30)
    rel = np.linalg.norm(got - ref) / scale
    abs_rel = np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30)
    check(rel <= tol and abs_rel <= tol,
          f"{name}: rel_l2 {rel:.2e}, max_abs/max {abs_rel:.2e} (tol {tol:.0e})")
    return max(rel, abs_rel)


# ---- the engine RNG, written independently ---------------------------------------------------

def rng_seed(seed):
    state, x = [], seed
    for _ in range(4):
        x = (x + 0x9E3779B97F4A7C15) & M64
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        state.append(z ^ (z >> 31))
    return state


def rotl(x, k):
    return ((x << k) | (x >> (64 - k))) & M64


def rng_next(s):
    result = (rotl((s[1] * 5) & M64, 7) * 9) & M64
    t = (s[1] << 17) & M64
    s[2] ^= s[0]
    s[3] ^= s[1]
    s[1] ^= s[2]
    s[0] ^= s[3]
    s[2] ^= t
    s[3] = rotl(s[3], 45)
    return result


def rng_batch(s, batch, size, outputs):
    """What the C test's batch_draw takes from the RNG: uniforms, then below(10) < 4."""
    n = batch * 3 * size * size
    u = np.array([rng_next(s) >> 11 for _ in range(n)], dtype=np.float64) * 2.0 ** -53
    pixels = (2.0 * u - 1.0).astype(np.float32).reshape(batch, 3, size, size)
    labels = []
    threshold = (1 << 64) % 10
    for _ in range(batch * outputs):
        r = rng_next(s)
        while r < threshold:
            r = rng_next(s)
        labels.append(1.0 if r % 10 < 4 else 0.0)
    return pixels, np.array(labels, dtype=np.float32).reshape(batch, outputs)


# ---- helpers ----------------------------------------------------------------------------------

def read_state(group):
    return {k: torch.from_numpy(np.asarray(v[()])) for k, v in group.items()}


def forward(model, x):
    """Logits and the embedding (the head's input) in eval mode."""
    captured = {}
    hook = model.fc.register_forward_hook(lambda m, i, o: captured.__setitem__("e", i[0]))
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
    hook.remove()
    return logits.numpy(), captured["e"].numpy()


def run_tool(*args):
    return subprocess.run([TOOL, *args], capture_output=True, text=True)


def write_checkpoint(path, model):
    """A checkpoint as any h5py user would write one (see notes/layout-checkpoint.md)."""
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "ichpipe-nn-checkpoint"
        f.attrs["format_version"] = 1
        f.attrs["model"] = "tiny"
        state = f.create_group("state_dict")
        for name, tensor in model.state_dict().items():
            state[name] = tensor.numpy()


# ---- C -> torch ---------------------------------------------------------------------------------

def test_export(export):
    f = h5py.File(os.path.join(export, "tiny.h5"), "r")
    expect = h5py.File(os.path.join(export, "expect.h5"), "r")

    attrs = dict(f.attrs)
    check(attrs.get("format") == "ichpipe-nn-checkpoint" and attrs.get("format_version") == 1
          and attrs.get("model") == "tiny" and attrs.get("precision") == "fp32"
          and attrs.get("storage") == "fp32" and attrs.get("step") == 2
          and attrs.get("epoch") == 1, f"root attributes {attrs}")
    check(all(k in attrs for k in ("program", "version", "command_line", "created")),
          "provenance attributes program, version, command_line, created")
    arch = {k: np.asarray(v).tolist() for k, v in f["architecture"].attrs.items()}
    check(arch == {"layers": [2, 2, 2, 2], "groups": 4, "width_per_group": 8, "base": 16,
                   "num_outputs": 6, "embed_dim": 512}, f"architecture {arch}")

    model = resnext_ref.build("tiny", 6)
    torch_keys = list(model.state_dict().keys())
    file_keys = list(f["state_dict"].keys())
    check(file_keys == torch_keys,
          f"state_dict: {len(file_keys)} keys, in torch's state_dict order")
    state = read_state(f["state_dict"])
    kinds = {(str(t.dtype), t.dim() if k.endswith("num_batches_tracked") else "-")
             for k, t in state.items()}
    check(kinds == {("torch.float32", "-"), ("torch.int64", 0)},
          f"dtypes: float32 tensors, int64 scalar counters {sorted(kinds)}")
    result = model.load_state_dict(state, strict=True)
    check(not result.missing_keys and not result.unexpected_keys,
          "torch load_state_dict(strict=True) accepts the engine checkpoint")
    loaded = model.state_dict()
    same = all(torch.equal(loaded[k], state[k]) for k in torch_keys)
    check(same, "every torch tensor bit-identical to the file")

    x = expect["eval/input"][()]
    logits, embedding = forward(model, x)
    compare("eval logits, torch on the checkpoint vs engine", logits, expect["eval/logits"])
    compare("eval embedding, torch vs engine", embedding, expect["eval/embedding"])

    # The RNG: same stream, same batches, same saved state.
    s = rng_seed(1234)
    stream = [rng_next(s) for _ in range(16)]
    check(stream == [int(v) for v in expect["rng/seed_1234"][()]],
          "engine RNG stream equals an independent xoshiro256** (seed 1234, 16 values)")
    s = rng_seed(1234)
    batches = [rng_batch(s, 2, 64, 6) for _ in range(2)]
    same_batches = all(np.array_equal(batches[i][0], expect[f"train/input_{i}"][()]) and
                       np.array_equal(batches[i][1], expect[f"train/labels_{i}"][()])
                       for i in range(2))
    check(same_batches, "training batches equal those drawn from the independent RNG")
    check([int(v) for v in f["rng_state"][()]] == s and
          f["rng_state"].attrs["algorithm"] == "xoshiro256**",
          "saved rng_state equals the independent RNG after the same draws")

    # Adam: torch from the same initial weights on the same batches.
    ref = resnext_ref.build("tiny", 6)
    ref.load_state_dict(resnext_ref.hashed_state(ref))
    ref.train()
    hp = {k: float(expect.attrs[k]) for k in ("lr", "beta1", "beta2", "eps", "weight_decay")}
    adam_attrs = {k: float(v) for k, v in f["adam"].attrs.items()}
    check(adam_attrs == hp, f"adam attributes {adam_attrs}")
    opt = torch.optim.Adam(ref.parameters(), lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]),
                           eps=hp["eps"], weight_decay=hp["weight_decay"])
    for i in range(2):
        opt.zero_grad()
        loss = resnext_ref.loss_fn(ref(torch.from_numpy(expect[f"train/input_{i}"][()])),
                                   torch.from_numpy(expect[f"train/labels_{i}"][()]))
        loss.backward()
        opt.step()
        compare(f"loss of step {i + 1}", [loss.item()], expect[f"train/loss_{i}"][()], 1e-5)
    params = dict(ref.named_parameters())
    check(list(f["adam/m"].keys()) == list(params.keys()) and
          list(f["adam/v"].keys()) == list(params.keys()),
          f"adam/m and adam/v: {len(params)} keys, the parameter names in order")
    worst = {"m": 0.0, "v": 0.0}
    for name, p in params.items():
        st = opt.state[p]
        for key, torch_key in (("m", "exp_avg"), ("v", "exp_avg_sq")):
            engine = f[f"adam/{key}/{name}"][()]
            if engine.shape != tuple(p.shape):
                check(False, f"adam/{key}/{name} shape {engine.shape}")
                continue
            ref_value = st[torch_key].numpy().astype(np.float64)
            err = np.linalg.norm(engine - ref_value) / max(np.linalg.norm(ref_value), 1e-30)
            worst[key] = max(worst[key], err)
    steps = {int(opt.state[p]["step"]) for p in params.values()}
    check(steps == {attrs.get("step")}, f"torch Adam step {steps} equals the file's step")
    check(worst["m"] <= TOL and worst["v"] <= TOL,
          f"Adam moments vs torch exp_avg / exp_avg_sq: worst rel_l2 m {worst['m']:.2e}, "
          f"v {worst['v']:.2e} (tol {TOL:.0e})")
    worst_buf, counters_ok = 0.0, True
    for name, b in ref.named_buffers():
        engine = f[f"state_dict/{name}"][()]
        if name.endswith("num_batches_tracked"):
            counters_ok &= int(engine) == int(b) == 2
        else:
            ref_value = b.numpy().astype(np.float64)
            worst_buf = max(worst_buf, np.linalg.norm(engine - ref_value) /
                            np.linalg.norm(ref_value))
    check(worst_buf <= TOL, f"running statistics vs torch: worst rel_l2 {worst_buf:.2e}")
    check(counters_ok, "num_batches_tracked 2 everywhere, as torch")
    return f, model


def test_bf16(export, f32):
    g = h5py.File(os.path.join(export, "tiny_bf16.h5"), "r")
    check(g.attrs["storage"] == "bf16", "bf16 file: storage attribute")
    wrong, values, ties, types_ok, dtypes = 0, 0, 0, True, set()
    for group in ("state_dict", "adam/m", "adam/v"):
        for name, ds in g[group].items():
            ref = f32[f"{group}/{name}"][()]
            if name.endswith("num_batches_tracked"):
                types_ok &= ds.dtype == np.int64 and ds[()] == ref
                continue
            t = ds.id.get_type()
            types_ok &= (t.get_size() == 2 and t.get_fields() == (15, 7, 8, 0, 7)
                         and t.get_ebias() == 127 and t.get_order() == h5py.h5t.ORDER_LE)
            dtypes.add(str(ds.dtype))
            got = np.ascontiguousarray(ds[()].astype(np.float32))
            want = torch.from_numpy(ref).to(torch.bfloat16).float().numpy()
            wrong += int((got.view(np.uint32) != want.view(np.uint32)).sum())
            ties += int(((ref.view(np.uint32) & 0xFFFF) == 0x8000).sum())
            values += got.size
    check(types_ok, "bf16 datasets: HDF5 float, 2 bytes, sign 15, exponent 7+8, mantissa 0+7, "
          "bias 127, little-endian; counters int64")
    print(f"      h5py {h5py.__version__} presents the bf16 datasets as {sorted(dtypes)}")
    check(wrong == 0 and values > 1000000,
          f"bf16: {values} values read by h5py, {wrong} differ from torch's bfloat16 rounding "
          f"of the fp32 values ({ties} exact ties among them)")

    model = resnext_ref.build("tiny", 6)
    model.load_state_dict(read_state(g["state_dict"]), strict=True)
    x = h5py.File(os.path.join(export, "expect.h5"), "r")["eval/input"][()]
    logits, _ = forward(model, x)
    ref_logits = h5py.File(os.path.join(export, "expect.h5"), "r")["eval/logits"][()]
    rel = np.linalg.norm(logits - ref_logits) / np.linalg.norm(ref_logits)
    # bf16 keeps 8 significant bits: 2^-9 = 0.2% per weight, a few % after 18 layers.
    check(rel < 0.05, f"logits of the bf16 weights vs fp32: rel_l2 {rel:.2e} (< 5e-2)")


# ---- torch -> C -------------------------------------------------------------------------------

def test_import(work):
    torch.manual_seed(5)
    model = resnext_ref.build("tiny", 6)
    model.train()
    with torch.no_grad():  # move the running statistics and counters off their defaults
        for _ in range(2):
            model(torch.randn(2, 3, 64, 64))
    x = torch.randn(2, 3, 64, 64).numpy()
    inputs = os.path.join(work, "py_input.h5")
    with h5py.File(inputs, "w") as f:
        f["input"] = x
    logits, embedding = forward(model, x)

    path = os.path.join(work, "py_tiny.h5")
    write_checkpoint(path, model)
    out = os.path.join(work, "py_out.h5")
    run = run_tool("--eval", path, inputs, out)
    check(run.returncode == 0, f"engine loads an h5py-written checkpoint strictly "
          f"(exit {run.returncode}) {run.stderr.strip()}")
    if run.returncode == 0:
        with h5py.File(out, "r") as r:
            compare("engine logits on torch weights vs torch", r["logits"][()], logits)
            compare("engine embedding on torch weights vs torch", r["embedding"][()], embedding)

    # A head of another size, as imported ImageNet weights would have.
    model.fc = torch.nn.Linear(512, 10)
    path = os.path.join(work, "py_head10.h5")
    write_checkpoint(path, model)
    run = run_tool("--eval", path, inputs, out)
    want = (f"{path}: checkpoint does not match model 'tiny':\n"
            "  size mismatch for fc.weight: shape [10, 512] in the checkpoint, [6, 512] in the "
            "model\n  size mismatch for fc.bias: shape [10] in the checkpoint, [6] in the model")
    check(run.returncode == 3 and want in run.stderr,
          f"strict load of a 10-output head: exit {run.returncode} (want 3), message:\n"
          f"{run.stderr.rstrip()}")
    run = run_tool("--eval", path, inputs, out, "--nonstrict")
    n = len(model.state_dict())
    check(run.returncode == 0 and f"loaded {n - 2} of {n} tensors" in run.stderr and
          "size mismatch for fc.weight" in run.stderr,
          f"non-strict load: exit {run.returncode}, warning:\n{run.stderr.rstrip()}")
    if run.returncode == 0:
        _, embedding10 = forward(model, x)
        with h5py.File(out, "r") as r:
            compare("non-strict: engine embedding vs torch", r["embedding"][()], embedding10)


def main():
    global TOOL
    build = os.environ.get("BUILD", os.path.join(ROOT, "build"))
    TOOL = os.path.join(build, "tests", "test_nn_checkpoint")
    if not os.access(TOOL, os.X_OK):
        print(f"FAIL: {TOOL} is not built (run make)")
        return 1
    torch.set_num_threads(1)
    work = os.environ.get("WORK") or tempfile.mkdtemp(prefix="nn_ckpt.")
    export = os.path.join(work, "export")
    run = run_tool("--export", export)
    if run.returncode != 0:
        print(f"FAIL: {TOOL} --export: exit {run.returncode}\n{run.stdout}{run.stderr}")
        return 1

    f32, _ = test_export(export)
    test_bf16(export, f32)
    test_import(work)
    if failures:
        print(f"{len(failures)} checks failed")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

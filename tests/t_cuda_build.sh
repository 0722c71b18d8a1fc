#!/bin/sh
# The CUDA backend on a machine without a GPU: when mk/probe.sh found CUDA, the plugin
# libichpipe_cuda.so holds kernels for sm_80 and sm_90 and is linked with cuDNN, cuBLAS and
# cudart, while no program is; the kernels' arithmetic (loss, Adam, batch norm's partial sums
# and mask, max pooling, mixed precision's bf16 and fp16 rounding and NHWC map, loss scaling's
# overflow check, index math past 2^32 elements; the sequence model's kernels replayed against
# lstm.c and seqmodel.c) equals the host code (checked on the host);
# asking for "cuda" without a GPU, or without the plugin, fails with the reason and exit 2.
set -u
prog=$BUILD/tests/gpu_parity
config=$BUILD/config.mk
fail() {
    echo "FAIL: $*"
    exit 1
}
[ -x "$prog" ] || fail "$prog was not built"

echo "== the kernels' element arithmetic against host_ops.c"
"$prog" --host-math || fail "math_cuda.h differs from host_ops.c"

if grep -q '^HAVE_CUDA = 1' "$config"; then
    echo "== probe found CUDA: $(grep '^NVCC' "$config")"
    obj=$BUILD/common/nn/backend_cuda.o
    plugin=$BUILD/libichpipe_cuda.so
    for f in "$obj" "$plugin" "$BIN/libichpipe_cuda.so"; do
        [ -f "$f" ] || fail "$f missing though the probe found CUDA"
    done
    code=$("$PY" tests/gpu/fatbin_archs.py "$obj") || fail "cannot read the GPU code of $obj"
    echo "GPU code in backend_cuda.o:" $code
    for arch in sm_80 sm_90 compute_90; do
        echo "$code" | grep -qx "$arch" || fail "no $arch code in $obj"
    done
    # The sequence model's kernels are in the plugin too (seqmodel_cuda.cu).
    seq_obj=$BUILD/common/nn/seqmodel_cuda.o
    code=$("$PY" tests/gpu/fatbin_archs.py "$seq_obj") ||
        fail "cannot read the GPU code of $seq_obj"
    echo "GPU code in seqmodel_cuda.o:" $code
    for arch in sm_80 sm_90 compute_90; do
        echo "$code" | grep -qx "$arch" || fail "no $arch code in $seq_obj"
    done
    nm -C "$plugin" | grep -q ' seq_forward(' || fail "$plugin lacks the sequence model's ops"
    nm -D --defined-only "$plugin" | grep -q ' T nn_cuda_plugin_create$' ||
        fail "$plugin does not export nn_cuda_plugin_create"
    needed=$(readelf -d "$plugin" | grep NEEDED)
    for lib in libcudnn libcublas libcudart; do
        echo "$needed" | grep -q "$lib" || fail "the plugin is not linked with $lib"
    done
    echo "plugin linked with: $(echo "$needed" | grep -o 'lib\(cudnn\|cublas\|cudart\)[^]]*' |
        tr '\n' ' ')"
    # The programs themselves never load cuDNN or cuBLAS: only the plugin does, on request.
    for prog_file in "$BIN"/* "$prog"; do
        case "$prog_file" in *.so) continue ;; esac
        if readelf -d "$prog_file" | grep NEEDED | grep -q 'libcudnn\|libcublas'; then
            fail "$prog_file depends on cuDNN or cuBLAS"
        fi
    done
    echo "no program depends on cuDNN or cuBLAS"
    expect="no usable NVIDIA GPU|no NVIDIA GPU found"

    echo "== a missing plugin"
    out=$(ICH_CUDA_PLUGIN=$WORK/none.so "$prog" --device cuda --ops 2>&1)
    rc=$?
    echo "exit $rc: $out"
    [ $rc -eq 2 ] && echo "$out" | grep -q "the CUDA backend cannot be loaded: .*none.so" ||
        fail "a missing plugin is not reported"
else
    echo "== probe found no CUDA (build without the backend)"
    expect="this build has no CUDA backend"
fi

echo "== --device cuda without a GPU"
out=$("$prog" --device cuda --ops 2>&1)
rc=$?
if [ $rc -eq 0 ]; then
    echo "$out" | tail -n 3
    echo "a GPU is usable here: its checks passed; the no-GPU message was not checked"
    exit 0
fi
echo "exit $rc: $out" | tail -n 3
[ $rc -eq 2 ] || fail "expected exit 2 (EXIT_USAGE), got $rc"
echo "$out" | grep -Eq "^gpu_parity: error: cuda: ($expect)" ||
    fail "the message does not give the reason ($expect)"

echo "== malformed and unknown device names"
out=$("$prog" --device cuda:x 2>&1)
rc=$?
echo "exit $rc: $out"
[ $rc -eq 2 ] && echo "$out" | grep -q "expected cuda or cuda:N" || fail "cuda:x accepted"
out=$("$prog" --device gpu0 2>&1)
rc=$?
echo "exit $rc: $out"
[ $rc -eq 2 ] && echo "$out" | grep -q "unknown device 'gpu0'" || fail "gpu0 accepted"
echo "ok"

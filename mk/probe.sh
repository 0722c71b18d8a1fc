#!/bin/sh
# Find the libraries by compiling and linking a tiny program against each, and write the
# flags to a make fragment. Usage: probe.sh OUTPUT.mk
set -u
out=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cc=${CC:-cc}
cxx=${CXX:-c++}
found=""
missing=""

# probe NAME LANG HEADER-AND-CALL FLAGS...
probe() {
    name=$1 lang=$2 body=$3
    shift 3
    if [ "$lang" = c ]; then src=$dir/$name.c; comp=$cc; else src=$dir/$name.cpp; comp=$cxx; fi
    printf '%s\n' "$body" >"$src"
    if $comp "$src" -o "$dir/$name" "$@" >"$dir/$name.log" 2>&1; then
        found="$found $name"
        return 0
    fi
    missing="$missing $name"
    return 1
}

hdf5_flags=$(pkg-config --cflags --libs hdf5 2>/dev/null || echo "-lhdf5")
dcmtk_libs="-ldcmjpls -ldcmjpeg -ldcmimage -ldcmimgle -ldcmdata -loflog -lofstd"

{
    echo "# written by mk/probe.sh"
    if probe hdf5 c '#include <hdf5.h>
int main(void) { return H5open() < 0; }' $hdf5_flags; then
        echo "HDF5_CFLAGS = $(pkg-config --cflags hdf5 2>/dev/null)"
        echo "HDF5_LIBS = $(pkg-config --libs hdf5 2>/dev/null || echo -lhdf5)"
    fi
    if probe jpeg c '#include <stdio.h>
#include <jpeglib.h>
int main(void) { struct jpeg_compress_struct c; (void)c; return jpeg_std_error(0) != 0; }' -ljpeg
    then
        echo "JPEG_LIBS = -ljpeg"
    fi
    probe zlib c '#include <zlib.h>
int main(void) { return zlibVersion()[0] == 0; }' -lz && echo "ZLIB_LIBS = -lz"
    if probe dcmtk cxx '#include <dcmtk/dcmdata/dctk.h>
#include <dcmtk/dcmjpeg/djdecode.h>
#include <dcmtk/dcmjpls/djdecode.h>
int main() { DJDecoderRegistration::registerCodecs(); DJLSDecoderRegistration::registerCodecs();
return 0; }' $dcmtk_libs; then
        echo "DCMTK_LIBS = $dcmtk_libs"
    fi
    # The engine's own loops share oneDNN's OpenMP team (common/nn/team.h): GNU OpenMP, as
    # Debian builds oneDNN with; the LSTM's gate loops take glibc's vector math (libmvec).
    if probe dnnl c '#include <dnnl.h>
int main(void) { return dnnl_version() == 0; }' -ldnnl -fopenmp -lmvec; then
        echo "HAVE_DNNL = 1"
        echo "DNNL_LIBS = -ldnnl -fopenmp -lmvec"
    fi
    if probe mpi c '#include <mpi.h>
int main(int c, char **v) { MPI_Init(&c, &v); return MPI_Finalize(); }' \
        $(pkg-config --cflags --libs ompi-c 2>/dev/null || echo -lmpi); then
        echo "HAVE_MPI = 1"
        echo "MPI_CFLAGS = $(pkg-config --cflags ompi-c 2>/dev/null)"
        echo "MPI_LIBS = $(pkg-config --libs ompi-c 2>/dev/null || echo -lmpi)"
    fi
    # NCCL (the GPU all-reduce of common/dist.c) under NCCL_HOME, default the CUDA toolkit.
    cuda_home=${CUDA_HOME:-/usr/local/cuda}
    nccl_home=${NCCL_HOME:-$cuda_home}
    nccl_inc="-I$cuda_home/include" nccl_ld="-L$cuda_home/lib64 -Wl,-rpath,$cuda_home/lib64"
    if [ "$nccl_home" != "$cuda_home" ]; then
        nccl_inc="-I$nccl_home/include $nccl_inc"
        nccl_ld="-L$nccl_home/lib64 -Wl,-rpath,$nccl_home/lib64 $nccl_ld"
    fi
    if probe nccl c '#include <nccl.h>
int main(void) { int v; return ncclGetVersion(&v) != ncclSuccess; }' \
        $nccl_inc $nccl_ld -lnccl -lcudart; then
        echo "HAVE_NCCL = 1"
        echo "NCCL_CFLAGS = $nccl_inc"
        echo "NCCL_LIBS = $nccl_ld -lnccl -lcudart"
    fi
    # CUDA: the NN backend (common/nn/*.cu) is built when nvcc, cudart, cuDNN and cuBLAS are
    # all found under CUDA_HOME / CUDNN_HOME (default /usr/local/cuda).
    cudnn_home=${CUDNN_HOME:-$cuda_home}
    cuda_inc="-I$cuda_home/include"
    [ "$cudnn_home" = "$cuda_home" ] || cuda_inc="$cuda_inc -I$cudnn_home/include"
    cuda_dirs="$cuda_home/lib64"
    [ "$cudnn_home" = "$cuda_home" ] || cuda_dirs="$cuda_dirs $cudnn_home/lib64 $cudnn_home/lib"
    cuda_ldflags=""
    for d in $cuda_dirs; do
        [ -d "$d" ] && cuda_ldflags="$cuda_ldflags -L$d -Wl,-rpath,$d"
    done
    nvcc=$cuda_home/bin/nvcc
    if [ -x "$nvcc" ]; then found="$found nvcc"; else missing="$missing nvcc"; fi
    probe cudart c '#include <cuda_runtime.h>
int main(void) { int n; return cudaGetDeviceCount(&n) == cudaSuccess && 0; }' \
        $cuda_inc $cuda_ldflags -lcudart
    probe cudnn c '#include <cudnn.h>
int main(void) { return cudnnGetVersion() == 0; }' $cuda_inc $cuda_ldflags -lcudnn
    probe cublas c '#include <cublas_v2.h>
int main(void) { cublasHandle_t h; return cublasCreate(&h) == 0 && 0; }' \
        $cuda_inc $cuda_ldflags -lcublas
    cuda_parts=0
    for part in nvcc cudart cudnn cublas; do
        case " $found " in *" $part "*) cuda_parts=$((cuda_parts + 1)) ;; esac
    done
    if [ $cuda_parts -eq 4 ]; then
        echo "HAVE_CUDA = 1"
        echo "NVCC = $nvcc"
        echo "CUDA_CFLAGS = $cuda_inc"
        # Linked into the backend's plugin (libichpipe_cuda.so) only, never into the programs.
        echo "CUDA_LIBS =$cuda_ldflags -lcudnn -lcublas -lcudart"
    fi
    echo "PROBE_FOUND =$found"
    echo "PROBE_MISSING =$missing"
} >"$out.tmp"
mv "$out.tmp" "$out"

echo "probe: found:${found:- none}; missing:${missing:- none}"
for need in hdf5 jpeg zlib dcmtk; do
    case " $missing " in
    *" $need "*)
        echo "probe: $need is required; run 'make deps' (log: see mk/probe.sh)" >&2
        exit 1 ;;
    esac
done
exit 0

#!/bin/sh
# Put what tests/gpu/run.sh needs on a GPU machine that lacks this build's Debian libraries
# into one folder: the check program, lstmtrain and the CUDA backend's plugin beside them
# (stripped), the
# all-reduce benchmark (bench/mpi_bench.c, in a build with MPI: it then carries OpenMPI's
# libraries, but not mpirun, which the GPU image lacks), and the shared libraries they load,
# except
# glibc's (the GPU machine's own) and CUDA's (its toolkit and PyTorch's wheels; run.sh finds
# them). The folder must stay under 64 MiB, what the device tool carries.
# Usage: bundle.sh BUILD BIN OUT
set -eu
build=$1 bin=$2 out=$3
limit_mib=64
prog=$build/tests/gpu_parity
[ -x "$prog" ] || { echo "bundle: $prog missing; run make" >&2; exit 1; }
grep -q '^HAVE_CUDA = 1' "$build/config.mk" ||
    { echo "bundle: this build has no CUDA backend (build/config.mk)" >&2; exit 1; }

rm -rf "$out.tmp"
mkdir -p "$out.tmp/bin" "$out.tmp/lib"
strip -o "$out.tmp/bin/gpu_parity" "$prog"
strip --strip-unneeded -o "$out.tmp/bin/libichpipe_cuda.so" "$build/libichpipe_cuda.so"
# lstmtrain, for its run on the GPU (tests/gpu/lstmtrain_gpu.py): it finds the plugin beside it.
strip -o "$out.tmp/bin/lstmtrain" "$bin/lstmtrain"

# The all-reduce driver, linked as bench/mpi_bench.sh links it.
config() { sed -n "s/^$1 = //p" "$build/config.mk"; }
carried="$prog $build/libichpipe_cuda.so $bin/lstmtrain"
if [ "$(config HAVE_MPI)" = 1 ]; then
    ${CC:-cc} -std=c11 -O2 -g -Wall -Wextra -D_GNU_SOURCE -pthread -Icommon \
        $(config HDF5_CFLAGS) -c bench/mpi_bench.c -o "$out.tmp/mpi_bench.o"
    ${CXX:-c++} -pthread "$out.tmp/mpi_bench.o" "$build/libichpipe.a" -o "$out.tmp/mpi_bench" \
        $(config DCMTK_LIBS) $(config HDF5_LIBS) $(config JPEG_LIBS) $(config ZLIB_LIBS) \
        $(config DNNL_LIBS) $(config MPI_LIBS) -Wl,--as-needed $(config NCCL_LIBS) -lm \
            -rdynamic -ldl
    strip -o "$out.tmp/bin/mpi_bench" "$out.tmp/mpi_bench"
    rm -f "$out.tmp/mpi_bench.o" "$out.tmp/mpi_bench"
    carried="$carried $out.tmp/bin/mpi_bench"
fi

# Every library ldd resolves, but the C library's own (libmvec's AVX-512 tanhf needs glibc
# 2.35 or later there) and CUDA's.
ldd $carried | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | while read -r name path; do
    case "$name" in
    libc.so* | libm.so* | libmvec.so* | libdl.so* | libpthread.so* | librt.so*) continue ;;
    libresolv.so* | ld-linux*) continue ;;
    libcuda* | libcudnn* | libcublas* | libnccl* | libnv*) continue ;;
    esac
    [ -f "$out.tmp/lib/$name" ] || cp -L "$path" "$out.tmp/lib/$name"
done

# The libraries travel as one xz archive (libdnnl alone is 38 MiB; HDF5's dependencies for
# lstmtrain add 20): run.sh unpacks it with Python's tarfile.
tar -C "$out.tmp" -cJf "$out.tmp/lib.tar.xz" lib
rm -rf "$out.tmp/lib"

{
    echo "# made by tests/gpu/bundle.sh on $(date -u +%Y-%m-%dT%H:%MZ) from $(git describe \
--always --dirty 2>/dev/null || echo unknown)"
    (cd "$out.tmp" && find . -type f | sort | xargs du -k)
} >"$out.tmp/MANIFEST"
size_kib=$(du -sk "$out.tmp" | cut -f1)
if [ "$size_kib" -gt $((limit_mib * 1024)) ]; then
    echo "bundle: $size_kib KiB is over the $limit_mib MiB the device tool carries" >&2
    exit 1
fi
rm -rf "$out"
mv "$out.tmp" "$out"
echo "bundle: $out, $((size_kib / 1024)) MiB:" $(tar -tJf "$out/lib.tar.xz" | sed 's|^lib/||')

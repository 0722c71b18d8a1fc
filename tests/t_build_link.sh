#!/bin/sh
# The Makefile's link rule on a program: linked under a hidden temporary name and renamed, so
# that a link that fails (a file mid-edit, another make writing the same objects) leaves the
# program that was there, never removes it under a test run that uses it (the cause of
# programs vanishing from bin-asan/ part way through a make test-asan). Builds one program
# against a copy of this build's library in $WORK; about 5 seconds.
set -u
: "${BUILD:?}" "${WORK:?}"
fail() {
    echo "FAIL: $*"
    exit 1
}
if [ ! -f "$BUILD/libichpipe.a" ] || [ ! -f "$BUILD/config.mk" ]; then
    echo "skip: $BUILD/libichpipe.a or $BUILD/config.mk is not built"
    exit 77
fi

build=$WORK/build
bin=$WORK/bin
mkdir -p "$build"
cp "$BUILD/libichpipe.a" "$BUILD/config.mk" "$build/"
touch "$build/config.mk"
# The flags of the build the library comes from (make test-asan: sanitizers).
san=0
if grep -q __asan_init "$BUILD/libichpipe.a"; then san=1; fi
# -o: the library copy counts as up to date; only the program is compiled and linked.
mk() {
    make --no-print-directory SAN=$san BUILD="$build" BIN="$bin" -o "$build/libichpipe.a" "$@"
}
mk "$bin/seqbuild" >"$WORK/make1.log" 2>&1 || fail "first build: $(tail -n 5 "$WORK/make1.log")"
"$bin/seqbuild" --help >/dev/null || fail "the program built does not run"
before=$(stat -c %i "$bin/seqbuild")
echo "ok    built $bin/seqbuild (inode $before)"

# A link that fails: the same rule with a library that does not exist.
if mk -B "$bin/seqbuild" LIBS=-lno_such_library_here >"$WORK/make2.log" 2>&1; then
    fail "the link with a missing library succeeded"
fi
grep -q "no_such_library_here" "$WORK/make2.log" || fail "$(tail -n 5 "$WORK/make2.log")"
[ -x "$bin/seqbuild" ] || fail "a failed link removed $bin/seqbuild"
[ "$(stat -c %i "$bin/seqbuild")" = "$before" ] || fail "a failed link replaced the program"
"$bin/seqbuild" --help >/dev/null || fail "the program left after a failed link does not run"
left=$(ls -A "$bin" | grep -v '^seqbuild$')
[ -z "$left" ] || fail "temporary files left in $bin: $left"
echo "ok    a failed link (missing library) left the program as it was, no temporary file"
echo "build link: all checks passed"

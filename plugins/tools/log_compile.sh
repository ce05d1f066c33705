#!/bin/sh
# CMake compiler launcher: runs the compiler command "$@" and keeps everything it printed (for nvcc
# with -Xptxas=-v: ptxas's register, spill and shared-memory figures per kernel and architecture)
# in <object>.log next to the object file, for tools/ptxas_resources.py.
out=""
prev=""
for arg in "$@"; do
    if [ "$prev" = "-o" ]; then out="$arg"; fi
    prev="$arg"
done
if [ -z "$out" ]; then exec "$@"; fi
"$@" > "$out.log.tmp" 2>&1
status=$?
cat "$out.log.tmp"
mv "$out.log.tmp" "$out.log"
exit $status

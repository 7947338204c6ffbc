#!/bin/sh
# Finish the workload root filesystem ($1).
set -eu
r="$1"
# the package's default cluster is not used: the entrypoint makes $PGDATA
rm -rf "$r/var/lib/postgresql/15" "$r/etc/postgresql/15"
mkdir -p "$r/var/lib/postgresql/data" "$r/data"
chroot "$r" chown postgres:postgres /var/lib/postgresql/data
# psql without the wrapper's cluster lookup
ln -sf /usr/lib/postgresql/15/bin/psql "$r/usr/local/bin/psql"
# no JIT: drop LLVM (and what only it needs), a third of the tree
rm -rf "$r/usr/lib/postgresql/15/lib/bitcode"
rm -f "$r"/usr/lib/postgresql/15/lib/llvmjit*.so "$r"/usr/lib/x86_64-linux-gnu/libLLVM-*.so* "$r"/usr/lib/x86_64-linux-gnu/libz3.so*

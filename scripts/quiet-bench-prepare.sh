#!/usr/bin/env bash
# Prepares what scripts/quiet-bench.sh carries to a machine with no Node, npm or network:
# dist/ (the router, the baselines and the routing benchmark, bundled) and .bench-carry/ (Node,
# wrk, redis-server with the libraries it needs, zeromq's addon, the router before issue 20's
# change). Needs npm ci, wrk and redis-server here (apt-get install wrk redis-server). ~2 minutes.
set -eu
cd "$(dirname "$0")/.."
export PATH=$PWD/node_modules/node/bin:$PATH
npm run build
# baseline.ts loads the simulated engine only with BASELINE_ENGINE=1: built to a folder, its chunks apart.
npx rolldown scripts/baseline.ts --dir dist/bench --platform node --format esm
for baseline in sse-baseline proxy-baseline; do
  npx rolldown "scripts/$baseline.ts" --file "dist/bench/$baseline.js" --platform node --format esm
done
npm run build:bench-routing
rm -rf dist/bench/node_modules   # zeromq travels in tools.tar.xz (x64 only), unpacked into ./node_modules there

carry=.bench-carry pack=$(mktemp -d)
mkdir -p "$carry" "$pack/lib" "$pack/before"
grep -qx '/.bench-carry/' .git/info/exclude 2>/dev/null || echo /.bench-carry/ >> .git/info/exclude
[ -f "$carry/node.xz" ] || xz -T2 -6 -c node_modules/node/bin/node > "$carry/node.xz"
cp /usr/bin/wrk "$pack/" && cp -L "$(command -v redis-server)" "$pack/redis-server"
for lib in libluajit-5.1.so.2 libatomic.so.1 liblzf.so.1 libjemalloc.so.2 libssl.so.3 libcrypto.so.3 libsystemd.so.0 \
  libcap.so.2 libgcrypt.so.20 liblzma.so.5 libzstd.so.1 liblz4.so.1 libgpg-error.so.0; do
  cp -L "/lib/x86_64-linux-gnu/$lib" "$pack/lib/"
done
tar -c node_modules/zeromq/package.json node_modules/zeromq/lib node_modules/zeromq/build/linux/x64 \
  node_modules/zeromq/build/manifest.json node_modules/cmake-ts/package.json node_modules/cmake-ts/build | tar -x -C "$pack"
# The router at 018775c (before the request pipeline moved), built with today's node_modules.
before=$(mktemp -d) && git worktree add --detach "$before" 018775c
ln -s "$PWD/node_modules" "$before/node_modules"
(cd "$before" && npx rolldown -c rolldown.config.ts) && cp "$before"/dist/*.js "$pack/before/" && rm -f "$pack/before/controller.js"
git worktree remove --force "$before"
tar -cJf "$carry/tools.tar.xz" -C "$pack" . && rm -rf "$pack"
du -sh "$carry" dist

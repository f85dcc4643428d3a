#!/usr/bin/env bash
# The benchmarks side by side on a quiet machine with many cores and no Node, npm or network
# (how BENCHMARKS.md's quiet-machine figures were taken). Each benchmark gets its own pair of
# cores (BENCH_CORE_BASE), the routing benchmark the rest, so all finish within about seven
# minutes. It runs from the repository's root after `scripts/quiet-bench-prepare.sh` (here, with
# npm) made `.bench-carry/` and `dist/`; results go to $OUT (default bench-results/quiet).
#
#   QUIET_SMOKE=1 scripts/quiet-bench.sh    # seconds-long runs, to check the script itself
set -u
OUT=${OUT:-bench-results/quiet}
mkdir -p "$OUT" /tmp/bin /tmp/tools
python3 -c "import lzma,shutil;shutil.copyfileobj(lzma.open('.bench-carry/node.xz'),open('/tmp/bin/node','wb'))"
python3 -c "import tarfile;tarfile.open('.bench-carry/tools.tar.xz').extractall('/tmp/tools')"
# zeromq's native addon, outside the bundle as in the image, for the simulated servers' KV events
[ -d node_modules/zeromq ] || { mkdir -p node_modules && cp -r /tmp/tools/node_modules/. node_modules/; }
cp /tmp/tools/wrk /tmp/tools/redis-server /tmp/bin/ && chmod +x /tmp/bin/*
export PATH=/tmp/bin:$PATH LD_LIBRARY_PATH=/tmp/tools/lib

if [ "${QUIET_SMOKE:-}" = 1 ]; then
  short="BENCH_SECONDS=1 BENCH_ROUNDS=1"; streams=250@50; routing="BENCH_QUICK=1"
else
  short="BENCH_SECONDS=5 BENCH_ROUNDS=5"; streams=1000@50; routing=""
fi
before=/tmp/tools/before/router.js   # the router before issue 20's change (018775c), same flags

{
  date -u; nproc; grep -m1 "model name" /proc/cpuinfo; free -g | head -2; node --version
  redis-server --version; wrk --version 2>&1 | head -1; git log -1 --format='%h %s' 2>/dev/null
} > "$OUT/machine.txt" 2>&1

run() { # name, core base, command...
  local name=$1 base=$2; shift 2
  (env BENCH_CORE_BASE="$base" "$@" > "$OUT/$name.txt" 2>&1; echo "exit $?" >> "$OUT/$name.txt") &
}
run infer 0 env $short BENCH_ONLY=overhead,overhead-quiet,overhead-256,overhead-engine,startup node scripts/bench.ts
run upstream 2 env ${short/ROUNDS=5/ROUNDS=4} node scripts/bench-upstream.ts
run upstream-before 4 env ${short/ROUNDS=5/ROUNDS=4} BENCH_ROUTER_BUNDLE=$before node scripts/bench-upstream.ts
run streams 6 env BENCH_STREAMS=$streams node --max-semi-space-size=1 scripts/bench-streams.ts
run streams-before 8 env BENCH_STREAMS=$streams BENCH_ROUTER_BUNDLE=$before node --max-semi-space-size=1 scripts/bench-streams.ts
if [ -f dist/bench/routing.js ]; then
  run routing 10 env $routing BENCH_CORES=10-15 node dist/bench/routing.js
fi
wait
tail -n 3 "$OUT"/*.txt

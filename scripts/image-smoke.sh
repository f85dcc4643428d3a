#!/usr/bin/env bash
# Smoke test of the container image: build it from the Dockerfile, run it
# read-only as a non-root user, probe /healthz, /readyz and /infer with env
# settings, and time a SIGTERM stop; run the controller's render in it; and
# run the Deployment the controller renders for deploy/controller/example.yaml
# with `podman kube play`, calling /infer.
#
# Uses buildah and podman (Debian: apt-get install buildah podman crun
# debootstrap). Where no registry is reachable, it first makes a local
# stand-in for the Dockerfile's base image (Debian bookworm minbase + this
# project's Node 24 + npm) and says so. Run as root: scripts/image-smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."

base="node:24-bookworm-slim"
image="localhost/inference-router:smoke"
port="${SMOKE_PORT:-18180}"
# Machine-specific flags for these sandboxes (see ../shared/notes): vfs storage,
# chroot isolation, cgroupfs, and ulimits the sandbox cannot raise.
store=(--storage-driver vfs)
podman=(podman "${store[@]}" --cgroup-manager cgroupfs)

say() { printf '\n== %s\n' "$*"; }

if ! buildah "${store[@]}" inspect --type image "$base" > /dev/null 2>&1; then
  if buildah "${store[@]}" pull "docker.io/library/$base" > /dev/null 2>&1; then
    say "pulled $base"
  else
    say "no registry: making a stand-in for $base (Debian bookworm minbase + Node $(node_modules/.bin/node --version) + npm)"
    rootfs="$(mktemp -d)"
    debootstrap --variant=minbase bookworm "$rootfs" > /dev/null
    install -m 0755 node_modules/node/bin/node "$rootfs/usr/local/bin/node"
    npm_root="$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")"
    mkdir -p "$rootfs/usr/local/lib/node_modules"
    cp -r "$npm_root" "$rootfs/usr/local/lib/node_modules/npm"
    ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$rootfs/usr/local/bin/npm"
    ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$rootfs/usr/local/bin/npx"
    # This machine reaches the npm registry through a TLS proxy with its own CA:
    # give the stand-in the host's CA bundle (the real base image needs none).
    mkdir -p "$rootfs/etc/ssl/certs"
    cp "${NODE_EXTRA_CA_CERTS:-/etc/ssl/certs/ca-certificates.crt}" "$rootfs/etc/ssl/certs/ca-certificates.crt"
    echo "node:x:1000:1000::/home/node:/bin/sh" >> "$rootfs/etc/passwd"
    echo "node:x:1000:" >> "$rootfs/etc/group"
    mkdir -p "$rootfs/home/node" && chown 1000:1000 "$rootfs/home/node"
    container="$(buildah "${store[@]}" from scratch)"
    buildah "${store[@]}" copy "$container" "$rootfs" / > /dev/null
    buildah "${store[@]}" config --env PATH=/usr/local/bin:/usr/bin:/bin \
      --env NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt "$container"
    buildah "${store[@]}" commit "$container" "$base" > /dev/null
    buildah "${store[@]}" rm "$container" > /dev/null
    rm -rf "$rootfs"
  fi
fi

say "building $image"
started=$(date +%s)
buildah "${store[@]}" bud --pull=never --isolation chroot -t "$image" . > /tmp/image-smoke-build.log 2>&1 \
  || { tail -30 /tmp/image-smoke-build.log; exit 1; }
echo "built in $(( $(date +%s) - started )) s"
size=$(buildah "${store[@]}" images --format '{{.Size}}' "$image" | head -1)
echo "image size: $size (uncompressed; base included)"

say "running it read-only, all capabilities dropped"
unshare -m --propagation private bash -s "$image" "$port" <<'INNER'
set -euo pipefail
image="$1"; port="$2"
umount /sys/fs/cgroup/unified 2>/dev/null || true
P="podman --storage-driver vfs --cgroup-manager cgroupfs"
U="--ulimit nofile=20000:20000 --ulimit nproc=32768:32768"
$P rm -f smoke > /dev/null 2>&1 || true
$P run -d --name smoke $U --network=host --read-only --cap-drop=ALL --security-opt no-new-privileges \
  -e PORT="$port" -e MODEL_REF=smoke-model -e MAX_CONCURRENCY=4 -e SIM_LATENCY_MS=5 -e POD_NAME=smoke-pod \
  -e KV_ENDPOINTS=kv-0:6379 "$image" > /dev/null
fail() { echo "FAIL: $*"; $P logs smoke | tail -20; $P rm -f smoke > /dev/null; exit 1; }
for i in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/readyz" > /dev/null && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$port/healthz" | grep -q '"ok"' || fail "/healthz"
curl -sf "http://127.0.0.1:$port/readyz" | grep -q '"ready"' || fail "/readyz"
body=$(curl -sf "http://127.0.0.1:$port/infer" -H 'content-type: application/json' -d '{"prompt":"smoke"}') || fail "/infer"
echo "$body" | grep -q '"modelRef":"smoke-model"' || fail "/infer body: $body"
echo "$body" | grep -q '"routerPod":"smoke-pod"' || fail "/infer routerPod: $body"
echo "POST /infer -> $body"
uid=$($P exec smoke node -e 'process.stdout.write(String(process.getuid()))')
[ "$uid" != "0" ] || fail "runs as root"
echo "runs as uid $uid"
if $P exec smoke node -e 'require("fs").writeFileSync("/probe", "x")' 2> /dev/null; then fail "root filesystem is writable"; fi
echo "root filesystem is read-only"
started=$(date +%s%N)
$P stop -t 10 smoke > /dev/null
stopped_ms=$(( ($(date +%s%N) - started) / 1000000 ))
code=$($P inspect smoke --format '{{.State.ExitCode}}')
echo "podman stop took ${stopped_ms} ms, exit code $code"
[ "$code" = "0" ] || fail "exit code $code after SIGTERM"
[ "$stopped_ms" -lt 5000 ] || fail "stop took ${stopped_ms} ms: SIGTERM not handled"
$P rm smoke > /dev/null
INNER

say "the controller in the image: render an InferenceService with no cluster"
unshare -m --propagation private bash -s "$image" <<'INNER'
set -euo pipefail
image="$1"
umount /sys/fs/cgroup/unified 2>/dev/null || true
P="podman --storage-driver vfs --cgroup-manager cgroupfs"
U="--ulimit nofile=20000:20000 --ulimit nproc=32768:32768"
out=$($P run --rm $U --network=none --read-only --cap-drop=ALL -i "$image" \
  node --disable-warning=DEP0040 dist/controller.js render - < deploy/controller/example.yaml)
echo "$out" | grep -q '^kind: Deployment$' || { echo "FAIL: render printed no Deployment"; echo "$out" | head; exit 1; }
echo "dist/controller.js render: $(echo "$out" | grep -c '^kind:') objects"
INNER

say "the Deployment the controller renders, run by podman kube play"
kport="${SMOKE_KUBE_PORT:-18181}"
play="$(mktemp -d)"
# The controller's own output for an InferenceService, with the built image. Changed for podman
# 4.3 only: PORT (the host network is shared here, so the pod cannot have 8080 to itself) and the
# probes (podman runs them with curl inside the container, which the image does not have) and the
# container port (podman refuses port mappings on the host network).
ROUTER_IMAGE="$image" node_modules/.bin/node --disable-warning=DEP0040 src/controller/main.ts render deploy/controller/example.yaml \
  | node_modules/.bin/node -e '
    const { parseAllDocuments, stringify } = require("yaml")
    const text = require("fs").readFileSync(0, "utf8")
    const deployment = parseAllDocuments(text).map((d) => d.toJS()).find((o) => o.kind === "Deployment")
    deployment.spec.replicas = 1
    const container = deployment.spec.template.spec.containers[0]
    container.env = container.env.map((e) => e.name === "PORT" ? { name: "PORT", value: process.argv[1] } : e)
    delete container.startupProbe; delete container.readinessProbe; delete container.livenessProbe
    delete container.ports // host network: no port mappings
    process.stdout.write(stringify(deployment))
  ' "$kport" > "$play/deployment.yaml"
cat > "$play/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
CONF
unshare -m --propagation private bash -s "$play" "$kport" <<'INNER'
set -euo pipefail
play="$1"; port="$2"
umount /sys/fs/cgroup/unified 2>/dev/null || true
export CONTAINERS_CONF="$play/containers.conf"
P="podman --storage-driver vfs --cgroup-manager cgroupfs"
$P kube play --network host "$play/deployment.yaml" > /dev/null
fail() { echo "FAIL: $*"; $P pod logs llama-router-pod-0 2>/dev/null | tail -20; $P kube down "$play/deployment.yaml" > /dev/null 2>&1; exit 1; }
for i in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/readyz" > /dev/null && break; sleep 0.1; done
body=$(curl -sf "http://127.0.0.1:$port/infer" -H 'content-type: application/json' -d '{"prompt":"kube"}') || fail "/infer"
echo "$body" | grep -q '"modelRef":"llama-3-8b"' || fail "/infer modelRef: $body"
echo "$body" | grep -q '"routerPod":"llama-router-pod-0"' || fail "/infer routerPod (downward API): $body"
echo "$body" | grep -q '"kvEndpoints":\["kv-0.kv:6379","kv-1.kv:6379"\]' || fail "/infer kvEndpoints: $body"
echo "POST /infer -> $body"
curl -sf "http://127.0.0.1:$port/metrics" | grep -q '^router_max_concurrency 8$' || fail "MAX_CONCURRENCY from the spec"
echo "router_max_concurrency 8 (spec.router.maxConcurrency)"
$P kube down "$play/deployment.yaml" > /dev/null
INNER
rm -rf "$play"

if [ "${SMOKE_KEEP_IMAGE:-0}" != "1" ]; then
  buildah "${store[@]}" rmi "$image" > /dev/null 2>&1 || true
fi
say "image smoke test passed"

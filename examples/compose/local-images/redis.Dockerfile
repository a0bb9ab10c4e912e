# Stand-in for redis:7 where no registry can be reached: Debian's redis-server (7.0) on the
# debootstrap base of scripts/images.sh. What the compose file needs of the image: redis-server
# and redis-cli on PATH, bash (the cluster's one-shot create) and a writable working directory
# for nodes-*.conf and the append-only files. Built by scripts/images.sh (needs network for apt: --network host).
ARG BASE=sluice-local/debian:bookworm
FROM ${BASE}
RUN apt-get update \
 && apt-get install -y redis-server redis-tools \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
# As in redis:7, the server runs unprivileged in a directory it owns.
WORKDIR /var/lib/redis
USER redis
CMD ["redis-server"]

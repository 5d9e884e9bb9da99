# Prometheus from Debian's package, for `docker-compose.debian.yaml`: where prom/prometheus
# cannot be pulled, the stack's Prometheus is built from the same Debian base as the demo.
ARG DEBIAN_IMAGE=debian:bookworm-slim
FROM ${DEBIAN_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus \
 && rm -rf /var/lib/apt/lists/*
# The package's data directory; the image runs Prometheus as root, like prom/prometheus's.
WORKDIR /var/lib/prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]

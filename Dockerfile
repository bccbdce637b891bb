# tcpproxy container image: the static binary that scripts/release.sh
# builds, on an empty base, so that building needs no registry pull (the
# way goreleaser images are made).
#
#   scripts/release.sh && podman build -t tcpproxy .
#   podman run --network host -v ./config.yaml:/etc/tcpproxy/config.yaml:ro tcpproxy
#
# No CA bundle: the proxy makes no TLS connection of its own. No shell
# either: the drain on SIGTERM is the proxy's own (shutdown_delay,
# shutdown_timeout), so nothing needs one.
FROM scratch

# Set by podman/buildah and docker buildx for the platform being built;
# amd64 for a builder that does not.
ARG TARGETARCH=amd64
ARG VERSION=unknown

LABEL org.opencontainers.image.title="tcpproxy" \
      org.opencontainers.image.description="A configurable layer-4 (TCP) proxy and load balancer" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"

COPY LICENSE /LICENSE
COPY dist/tcpproxy-linux-${TARGETARCH} /tcpproxy

# The config is mounted here (a ConfigMap in Kubernetes); -c overrides it.
ENV TCPPROXY_CONFIG=/etc/tcpproxy/config.yaml

# Non-root: the conventional "nonroot" user of distroless images. Ports
# below 1024 then need CAP_NET_BIND_SERVICE, or a Service mapping them.
USER 65532:65532

ENTRYPOINT ["/tcpproxy"]

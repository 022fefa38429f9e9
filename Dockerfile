# fnbroker's container image: the static musl binary (scripts/release.sh) on an empty base.
#
#   docker build -t fnbroker .        (or: buildah build -t fnbroker .)
#   docker run -p 8080:8080 -p 9464:9464 -v ./fnbroker.yaml:/etc/fnbroker/fnbroker.yaml:ro fnbroker
#
# The runtime stage takes everything from /out of the build stage; the test suite builds that
# stage alone from a locally built binary (base images cannot be pulled there).

# Build: the static binary, and the CA certificates for TLS to brokers and functions.
FROM docker.io/library/rust:1-bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends musl-tools ca-certificates \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN CARGO_TARGET_DIR=/src/target scripts/release.sh \
 && mkdir -p /out \
 && cp dist/fnbroker /out/fnbroker \
 && cp /etc/ssl/certs/ca-certificates.crt /out/ca-certificates.crt \
 && cp deploy/container/fnbroker.yaml deploy/container/passwd deploy/container/group /out/

# Runtime: nothing but the binary, its default configuration, CA certificates and a user.
FROM scratch AS runtime
COPY --from=build /out/passwd /out/group /etc/
COPY --from=build /out/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/fnbroker.yaml /etc/fnbroker/fnbroker.yaml
COPY --from=build /out/fnbroker /usr/local/bin/fnbroker
# Not root; the root filesystem can be read-only (fnbroker writes nothing but its log to stderr).
USER 65532:65532
# The HTTP ingress of the default configuration, and the admin endpoint (probes, /metrics).
EXPOSE 8080 9464
ENV FNBROKER_CONFIG=/etc/fnbroker/fnbroker.yaml \
    FNBROKER_LOG_FORMAT=json
ENTRYPOINT ["/usr/local/bin/fnbroker"]
CMD ["run"]

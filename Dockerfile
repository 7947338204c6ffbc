# The votingstack operator image: `votingstack controller` by default; the
# same binary also runs `plan`, `apply`, `destroy` and `crd`.
#
#   docker build -t ghcr.io/votingstack/operator:0.1.0 .

ARG RUST_VERSION=1

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /build
ENV CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_TERM_COLOR=never

# Dependencies first, against stub sources: this layer is rebuilt only when
# Cargo.toml or Cargo.lock change, not on every source edit.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked --bin votingstack \
 && rm -rf src

# The real sources; touch so cargo rebuilds the crate over the stub build.
COPY src ./src
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin votingstack \
 && install -m 0755 target/release/votingstack /usr/local/bin/votingstack \
 && /usr/local/bin/votingstack --help > /dev/null

# glibc, libgcc and CA certificates, no shell; matches the bookworm builder.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="votingstack-operator" \
      org.opencontainers.image.description="Kubernetes operator and CLI for the three-tier voting app on AWS EC2" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /usr/local/bin/votingstack /usr/local/bin/votingstack
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/votingstack"]
CMD ["controller"]

# cordon/xds: the control plane (`cordon-xds serve`). It reads the allowlist
# directory (mount it read-only) and serves ADS over SPIFFE mTLS; it calls
# nothing outside, so it needs no CA bundle.
FROM scratch
COPY cordon-xds /usr/local/bin/cordon-xds
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/cordon-xds"]
CMD ["--help"]

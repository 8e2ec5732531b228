# cordon/dispatcher: the central API (`cordon-dispatcher serve`) and the
# audit store's operator tool (migrate, verify, retention).
FROM scratch
# STS (credential minting) and the OIDC issuer's JWKS are public TLS
# endpoints: they need the system roots.
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY cordon-dispatcher /usr/local/bin/cordon-dispatcher
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/cordon-dispatcher"]
CMD ["--help"]

# cordon/probe: a hostile "job" for the local stack and the e2e tests
# (test/cmd/cordon-probe): it tries egress through the proxy, around it, over
# UDP and IPv6, to the metadata addresses, and prints its secrets. Test image
# only. In a task it runs under the shim:
#   /cordon/bin/cordon-sidecar run -- /usr/local/bin/cordon-probe ATTEMPT...
FROM scratch
COPY cordon-probe /usr/local/bin/cordon-probe
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/cordon-probe"]

# cordon/devspiffe: the development SPIFFE Workload API (test/cmd/cordon-devspiffe)
# for the local stack, where SPIRE is absent. Never deploy it.
FROM scratch
COPY cordon-devspiffe /usr/local/bin/cordon-devspiffe
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/cordon-devspiffe"]
CMD ["--help"]

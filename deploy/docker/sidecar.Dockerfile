# cordon/sidecar: the per-task sidecar container (`cordon-sidecar agent`).
# The agent copies this same binary into the task's shared volume, where the
# job container runs it as its entrypoint shim (`cordon-sidecar run --`), so
# the job image needs nothing from Cordon. Built by build-images.sh from a
# context that holds only the static binary and the CA bundle.
FROM scratch
# Secrets Manager (through its VPC endpoint) presents an Amazon public
# certificate: the one thing here that needs the system roots.
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
# Not under /cordon: the shared volume is mounted there and would hide it.
COPY cordon-sidecar /usr/local/bin/cordon-sidecar
# The task volumes' mount points, owned by the agent's user. On Fargate a
# task volume mounted where the image declares a VOLUME starts as a copy of
# that directory, ownership included; without this it would be root's 0755
# and the non-root agent could not write its binary or socket there.
COPY --chown=65532:65532 empty/ /cordon/
# The agent's spool of undelivered reports (--spool-dir), the same way.
COPY --chown=65532:65532 empty/ /var/lib/cordon/spool/
VOLUME ["/cordon", "/var/lib/cordon/spool"]
# scratch has no /etc/passwd, so the user is numeric (distroless "nonroot").
USER 65532:65532
# For docker and compose; ECS uses the task definition's healthCheck.
HEALTHCHECK --interval=2s --timeout=3s --start-period=2s --retries=3 \
  CMD ["/usr/local/bin/cordon-sidecar", "health"]
ENTRYPOINT ["/usr/local/bin/cordon-sidecar"]
CMD ["agent"]

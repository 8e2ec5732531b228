# cordon/egress: the central egress gateway (`cordon-egress serve` in
# gateway mode), the only task on the job network with a route out. It
# tunnels and forwards without terminating TLS, so it needs no CA bundle.
FROM scratch
COPY cordon-egress /usr/local/bin/cordon-egress
USER 65532:65532
# 3128: proxy (static mode); 8443: gateway mTLS listener.
EXPOSE 3128 8443
ENTRYPOINT ["/usr/local/bin/cordon-egress"]
CMD ["serve"]

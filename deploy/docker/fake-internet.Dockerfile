# cordon/fake-internet: the "internet" of the local stack and the e2e tests
# (test/cmd/fake-internet): HTTP, HTTPS, UDP echo and DNS that record what
# reached them. Test image only.
FROM scratch
COPY fake-internet /usr/local/bin/fake-internet
USER 65532:65532
EXPOSE 8080 8443 9999/udp
ENTRYPOINT ["/usr/local/bin/fake-internet"]

// Package loadgen is Cordon's own load generator for forward proxies: it
// starts loopback upstreams (HTTP and DNS) and measures, directly or through
// an HTTP proxy, keep-alive request rate and latency, new CONNECT tunnels per
// second, bulk throughput through one tunnel, and the proxy's memory with many
// idle tunnels open.
//
// It exists for `make bench-egress`, which compares cordon-egress with squid
// and tinyproxy on the same machine in one run. The client and the upstream
// speak just enough HTTP/1.1 for that purpose and allocate nothing per request
// on the keep-alive path, so the measurement is of the proxy, not of the tool.
//
// It is not a general HTTP client or server, not a correctness test of any
// proxy, and it never sends traffic anywhere but loopback addresses.
package loadgen

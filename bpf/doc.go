// Package bpf confines a job's network egress with eBPF programs attached to
// the job's cgroup v2, on hosts where Cordon may load them (EC2 launch type,
// self-hosted nodes, test machines). It is a library for `cordon-sidecar run`
// and is not the egress policy itself: which hosts a job may reach is decided
// by the egress proxy; this package only makes the proxy unavoidable.
//
// # What it enforces
//
// A process in the job's cgroup (and in any cgroup below it) may:
//   - connect() over TCP to the proxy address:port, to the DNS resolver's
//     address:port (DNS over TCP, for truncated answers), to each of
//     Policy.AllowEndpoints (that address and port only, no other port of
//     the address: the agent's credentials endpoint on a loopback shared
//     with the agent's other listeners), and to any address inside
//     Policy.AllowCIDRs (any port; the allowlist's `cidr` entries, such as
//     VPC endpoints);
//   - send UDP, connected or not, only to the DNS resolver address:port. No
//     DNS tunnel through another resolver, no QUIC around the proxy;
//   - nothing else: other connect() and sendmsg() calls fail with EPERM, and
//     so does any socket protocol other than TCP and UDP (SCTP, MPTCP).
//
// An IPv4-mapped IPv6 destination (::ffff:a.b.c.d) is judged as the IPv4
// address it carries, because that is where the kernel sends it. Other IPv6
// forms that embed IPv4 (NAT64, 6to4, ::a.b.c.d) are plain IPv6 addresses
// and need an IPv6 CIDR. The cloud metadata addresses (169.254.169.254,
// 169.254.170.2, fd00:ec2::254) are never reachable, even inside an allowed
// CIDR (DESIGN.md: "metadata never"); naming one as the proxy, the resolver
// or an allowed endpoint is a validation error.
//
// Behind the socket hooks a cgroup_skb/egress program sees every IP packet
// the cgroup's sockets send. It counts them (Counters, for usage reports) and
// drops any packet the current policy would not allow: traffic from raw
// sockets, traffic on connections that a later Update no longer allows (an
// Update revokes established connections, not just new ones), and every
// IPv6 packet with a routing header (an unprivileged socket may set one with
// IPV6_RTHDR and so send through addresses its connect() never named).
//
// # Policy updates
//
// The policy lives in one LPM trie held in slot 0 of an array-of-maps.
// Its keys are family, address and port; every lookup gives all three, so
// an allowed endpoint is an entry covering all of them (one port) and a
// CIDR or host entry one that stops after the address (every port).
// Update builds a complete new trie and swaps it in with a single map
// update, so the change is atomic in this sense: every hook invocation
// judges against exactly one policy generation, old or new, never a mix and
// never a half-filled table; the first connect() after Update returns is
// judged by the new policy. (The kernel makes a map-in-map update from user
// space wait an RCU grace period, so when Update returns no program is still
// running with the old trie; that wait is most of an Update's ~10ms.)
//
// # What it cannot do
//
//   - It cannot run on Fargate: a Fargate task cannot add CAP_BPF or
//     CAP_SYS_ADMIN, so Enforce returns an error matching ErrNotSupported and
//     the network (no NAT, a security group that only reaches the gateway)
//     is the enforcement; see DESIGN.md. The sidecar records which applies
//     with LevelCgroupEBPF or LevelNetworkOnly.
//   - It sees only what passes through the job's sockets. Raw and packet
//     sockets need CAP_NET_RAW, which the sidecar drops for the job (raw IP
//     sockets are still caught by the egress drop; AF_PACKET frames below IP
//     are not). The job must also get no_new_privs, no CAP_SYS_ADMIN or
//     CAP_BPF (it could detach the programs) and no write access to cgroup
//     files outside its own cgroup (it could move itself out).
//   - It governs IP sockets only. AF_UNIX sockets (a mounted Docker socket,
//     the agent's socket) and AF_VSOCK (a VM's host) are outside it: do not
//     give the job any it should not use.
//   - It judges destinations by address and port only; names are the proxy's
//     business. Whatever an allowed CIDR or endpoint reaches, the job
//     reaches directly.
//   - The programs stay attached only while the Enforcement is open: they
//     are held by bpf_link file descriptors in the sidecar, not pinned.
//
// # Enforcement levels
//
// LevelCgroupEBPF means Enforce succeeded for the job's cgroup;
// LevelNetworkOnly means it returned ErrNotSupported and only the network
// path (proxy environment plus VPC rules) confines the job. These strings
// are what usage.Report.Enforcement carries.
//
// # Putting the job into the cgroup
//
// Create the cgroup with NewJobCgroup, call Enforce on its Path, then start
// the job with JobCgroup.Apply(cmd): Go starts the child with clone3 and
// CLONE_INTO_CGROUP (SysProcAttr.UseCgroupFD), so the child is inside the
// cgroup from its first instruction and never runs unconfined, unlike
// starting it and then calling AddProc. Enforce refuses a cgroup that holds
// the caller, so the sidecar never confines itself. Read Counters for the
// final usage report before Close; JobCgroup.Kill ends the whole job tree at
// its timeout and Remove cleans up. See the package example.
//
// The cgroup programs are in cgroup_enforce.c; enforce_bpfel.{go,o} are
// generated from it by ./bpf/generate.sh and checked by
// ./bpf/check-generated.sh. Only little-endian objects are built, so the
// package compiles on little-endian architectures only.
package bpf

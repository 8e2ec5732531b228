//go:build ignore

// cgroup_enforce.c: the kernel half of Cordon's cgroup egress enforcement.
// See doc.go for what it enforces and what it does not; enforce.go loads it.
//
// Programs (each returns 1 to let the operation through, 0 to refuse it,
// which the caller sees as EPERM):
//   cgroup/connect4, cgroup/connect6   TCP: proxy addr:port, DNS addr:port
//                                      (TCP 53 for truncated answers),
//                                      allowed endpoints (exact addr:port)
//                                      and allowed CIDRs; UDP connect():
//                                      DNS only
//   cgroup/sendmsg4, cgroup/sendmsg6   unconnected UDP: DNS addr:port only
//   cgroup_skb/egress                  counts every IP packet the cgroup
//                                      sends and drops any the policy does
//                                      not allow (raw sockets, connections
//                                      opened before a policy update, IPv6
//                                      routing headers)
//
// Policy: one LPM trie holds everything a decision needs (see struct
// lpm_key and struct lpm_val). The trie sits in slot 0 of the array-of-maps
// "policy"; an update builds a fresh trie in user space and swaps the slot,
// so every program invocation sees exactly one policy generation, never a
// mix, and never an empty table mid-update. An empty slot denies everything.
//
// Only clang and the kernel UAPI headers (linux-libc-dev) are needed: the
// few libbpf helper macros used here are defined below, so the build does
// not depend on libbpf-dev.

#include <linux/bpf.h>
#include <linux/in.h>

#define SEC(name) __attribute__((section(name), used))
#undef __always_inline
#define __always_inline inline __attribute__((always_inline))

// BTF-defined map syntax understood by cilium/ebpf (and libbpf).
#define __uint(name, val) int(*name)[val]
#define __type(name, val) typeof(val) *name
#define __array(name, val) typeof(val) *name[]

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_lookup_elem;
static long (*bpf_skb_load_bytes)(const void *skb, __u32 offset, void *to, __u32 len) = (void *)BPF_FUNC_skb_load_bytes;

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define be16_to_cpu(x) __builtin_bswap16(x)
#define cpu_to_be16(x) __builtin_bswap16(x)
#define cpu_to_be32(x) __builtin_bswap32(x)
#else
#define be16_to_cpu(x) (x)
#define cpu_to_be16(x) (x)
#define cpu_to_be32(x) (x)
#endif

char __license[] SEC("license") = "Apache-2.0";

// Address families in lpm_key.family. Not AF_INET/AF_INET6: these are only
// tags that keep IPv4 and IPv6 prefixes apart in one trie, so ::/0 never
// matches an IPv4 destination.
#define FAMILY_V4 4
#define FAMILY_V6 6

// Bits of lpm_val.flags.
#define ALLOW_PROXY 1    // TCP to proxy_port
#define ALLOW_DNS 2      // UDP or TCP to dns_port
#define ALLOW_CIDR 4     // TCP to any port
#define ALLOW_ENDPOINT 8 // TCP to the port in this entry's key (see lpm_key)

// MAX_POLICY_ENTRIES bounds the trie: the proxy, the resolver, the
// metadata addresses, up to 1000 CIDRs and up to 64 endpoints (policy.go's
// MaxCIDRs and MaxEndpoints; it checks the count before building a trie).
// The trie is not preallocated, so the bound costs no memory.
#define MAX_POLICY_ENTRIES 1088

// KEY_PREFIXLEN is the prefixlen of a lookup key: the 32 family bits, 128
// address bits (an IPv4 address uses the first 32, the rest are zero) and
// the 16 port bits.
#define KEY_PREFIXLEN (32 + 128 + 16)

// lpm_key is the trie key. prefixlen counts bits from family on. A lookup
// always gives the whole key, destination port included (KEY_PREFIXLEN).
// Entries come in two kinds:
//   - networks and hosts (CIDRs, the proxy, the resolver, metadata): 32
//     family bits plus the prefix's address bits; port is zero and never
//     reached, so they match every port;
//   - endpoints (one address and TCP port): all KEY_PREFIXLEN bits, so
//     they match that port only, and being longer than any host entry
//     they win for it.
// An IPv4 address fills addr[0..3]; addr[4..15] stays zero, in entries and
// in lookup keys alike.
struct lpm_key {
	__u32 prefixlen;
	__u32 family;
	__u8 addr[16];
	__u8 port[2]; // big-endian (network order, so bits compare in order)
	__u8 pad[2];  // always zero: part of the key bytes, beyond any prefixlen
};

// lpm_val says what a prefix allows. The proxy and resolver are single
// addresses (/32 or /128). A trie lookup returns only the longest match, so
// user space merges what shorter entries allow into longer ones: ALLOW_CIDR
// into a host or endpoint inside an allowed CIDR, and the flags and ports
// of a host entry into an endpoint on that host. ALLOW_ENDPOINT appears
// only on endpoint entries: matching one already means the port is right.
struct lpm_val {
	__u32 flags;
	__u16 proxy_port; // host byte order
	__u16 dns_port;   // host byte order
};

// counters is the per-CPU traffic record user space sums for usage reports.
// Per-CPU, yet updated with atomic adds: on one CPU the egress program can
// run in process context and be interrupted by itself in softirq context
// (a TCP ACK or retransmit), and a plain ++ would then lose a count.
struct counters {
	__u64 tx_packets;       // IP packets the cgroup sent and the policy allowed
	__u64 tx_bytes;         // their L3 length (IP header included)
	__u64 tx_payload_bytes; // their TCP/UDP payload (L4 headers excluded)
	__u64 drop_packets;     // IP packets dropped by cgroup_skb/egress
	__u64 drop_bytes;       // their L3 length
	__u64 denied_connects;  // connect() calls refused
	__u64 denied_sendmsgs;  // UDP sendmsg() calls refused
};

// policy_trie is the inner map's template. Sizes rather than types: clang
// describes types reached through two levels of pointers (outer map ->
// inner map -> key) only as forward declarations, which have no size.
struct policy_trie {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MAX_POLICY_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(key_size, sizeof(struct lpm_key));
	__uint(value_size, sizeof(struct lpm_val));
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct policy_trie);
} policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct counters);
} stats SEC(".maps");

static __always_inline struct counters *my_counters(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&stats, &zero);
}

// lookup returns what the current policy generation allows for key, or
// NULL (deny) when nothing matches or no policy is installed. It is a real
// BPF function (not inlined) so that its signature puts lpm_key and lpm_val
// into BTF, where bpf2go finds them to generate their Go types.
static __attribute__((noinline)) struct lpm_val *lookup(struct lpm_key *key)
{
	__u32 zero = 0;
	void *trie = bpf_map_lookup_elem(&policy, &zero);
	if (!trie)
		return 0;
	return bpf_map_lookup_elem(trie, key);
}

// allowed is the whole policy: proto is IPPROTO_TCP or IPPROTO_UDP, port is
// in host byte order.
static __always_inline int allowed(const struct lpm_val *v, __u8 proto, __u16 port)
{
	if (!v)
		return 0;
	if (proto == IPPROTO_TCP) {
		if (v->flags & (ALLOW_CIDR | ALLOW_ENDPOINT))
			return 1;
		if ((v->flags & ALLOW_PROXY) && port == v->proxy_port)
			return 1;
		if ((v->flags & ALLOW_DNS) && port == v->dns_port)
			return 1;
		return 0;
	}
	if (proto == IPPROTO_UDP)
		return (v->flags & ALLOW_DNS) && port == v->dns_port;
	return 0;
}

// key_v4, key_v6 and key_port fill a zeroed lookup key.
static __always_inline void key_v4(struct lpm_key *k, __u32 addr_be)
{
	k->prefixlen = KEY_PREFIXLEN;
	k->family = FAMILY_V4;
	*(__u32 *)&k->addr[0] = addr_be;
}

// key_v6 fills k from the four big-endian words of an IPv6 address,
// unwrapping a v4-mapped address (::ffff:a.b.c.d) to its IPv4 form: the
// kernel sends those as IPv4, so they must meet the IPv4 policy.
static __always_inline void key_v6(struct lpm_key *k, __u32 w0, __u32 w1, __u32 w2, __u32 w3)
{
	if (w0 == 0 && w1 == 0 && w2 == cpu_to_be32(0x0000ffff)) {
		key_v4(k, w3);
		return;
	}
	k->prefixlen = KEY_PREFIXLEN;
	k->family = FAMILY_V6;
	*(__u32 *)&k->addr[0] = w0;
	*(__u32 *)&k->addr[4] = w1;
	*(__u32 *)&k->addr[8] = w2;
	*(__u32 *)&k->addr[12] = w3;
}

// key_port sets the key's port; port is in host byte order.
static __always_inline void key_port(struct lpm_key *k, __u16 port)
{
	k->port[0] = port >> 8;
	k->port[1] = port & 0xff;
}

// sock_proto maps a socket to the protocol its policy row applies to, or 0
// for a socket the policy never allows (SCTP, MPTCP, ...).
static __always_inline __u8 sock_proto(struct bpf_sock_addr *ctx)
{
	__u32 proto = ctx->protocol;
	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP)
		return proto;
	return 0;
}

static __always_inline int verdict_connect(struct bpf_sock_addr *ctx, struct lpm_key *k)
{
	__u16 port = be16_to_cpu(ctx->user_port);
	key_port(k, port);
	if (allowed(lookup(k), sock_proto(ctx), port))
		return 1;
	struct counters *c = my_counters();
	if (c)
		__sync_fetch_and_add(&c->denied_connects, 1);
	return 0;
}

static __always_inline int verdict_sendmsg(struct bpf_sock_addr *ctx, struct lpm_key *k)
{
	__u8 proto = sock_proto(ctx);
	__u16 port = be16_to_cpu(ctx->user_port);
	key_port(k, port);
	if (proto == IPPROTO_UDP && allowed(lookup(k), proto, port))
		return 1;
	struct counters *c = my_counters();
	if (c)
		__sync_fetch_and_add(&c->denied_sendmsgs, 1);
	return 0;
}

SEC("cgroup/connect4")
int connect4(struct bpf_sock_addr *ctx)
{
	struct lpm_key k = {};
	key_v4(&k, ctx->user_ip4);
	return verdict_connect(ctx, &k);
}

SEC("cgroup/connect6")
int connect6(struct bpf_sock_addr *ctx)
{
	struct lpm_key k = {};
	key_v6(&k, ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]);
	return verdict_connect(ctx, &k);
}

SEC("cgroup/sendmsg4")
int sendmsg4(struct bpf_sock_addr *ctx)
{
	struct lpm_key k = {};
	key_v4(&k, ctx->user_ip4);
	return verdict_sendmsg(ctx, &k);
}

SEC("cgroup/sendmsg6")
int sendmsg6(struct bpf_sock_addr *ctx)
{
	struct lpm_key k = {};
	key_v6(&k, ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]);
	return verdict_sendmsg(ctx, &k);
}

// Packet layout constants (offsets from the start of the IP header, which
// is where skb data starts in a cgroup_skb program).
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPV4_HDR_MIN 20
#define IPV6_HDR_LEN 40
#define NEXTHDR_HOP 0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_DEST 60
#define MAX_V6_EXT 4
#define IPV4_FRAG_OFFSET_MASK 0x1fff
#define UDP_HDR_LEN 8

// packet is what the egress check needs from one IP packet.
struct packet {
	struct lpm_key key;
	__u32 l3_hdr_len; // IP header length
	__u8 proto;       // transport protocol (IPPROTO_*), 0 if unknown
	__u8 later_frag;  // a non-first fragment: no transport header
};

// parse_v4 reads an IPv4 header. It returns 0 when the header is malformed.
static __always_inline int parse_v4(struct __sk_buff *skb, struct packet *p)
{
	__u8 h[IPV4_HDR_MIN];
	if (bpf_skb_load_bytes(skb, 0, h, sizeof(h)) < 0)
		return 0;
	if ((h[0] >> 4) != 4)
		return 0;
	__u32 ihl = (h[0] & 0x0f) * 4;
	if (ihl < IPV4_HDR_MIN)
		return 0;
	p->l3_hdr_len = ihl;
	p->proto = h[9];
	p->later_frag = ((((__u16)h[6] << 8) | h[7]) & IPV4_FRAG_OFFSET_MASK) != 0;
	__u32 daddr;
	__builtin_memcpy(&daddr, &h[16], 4);
	key_v4(&p->key, daddr);
	return 1;
}

// parse_v6 reads an IPv6 header and walks up to MAX_V6_EXT Hop-by-Hop and
// Destination Options headers, which do not change where the packet goes
// (the kernel adds a Hop-by-Hop jumbo header to BIG TCP packets over 64KiB).
// A Routing header does change it: an unprivileged socket may set a segment
// routing header (IPV6_RTHDR), sending the packet via addresses its connect()
// never named, so such packets are always dropped. A fragment header makes
// the packet judged by destination address alone (see egress). Any other
// next header is "other protocol": only an allowed CIDR lets it through.
static __always_inline int parse_v6(struct __sk_buff *skb, struct packet *p)
{
	__u32 h[IPV6_HDR_LEN / 4];
	if (bpf_skb_load_bytes(skb, 0, h, sizeof(h)) < 0)
		return 0;
	__u8 *b = (__u8 *)h;
	if ((b[0] >> 4) != 6)
		return 0;
	key_v6(&p->key, h[6], h[7], h[8], h[9]);
	__u32 off = IPV6_HDR_LEN;
	__u8 next = b[6];
#pragma unroll
	for (int i = 0; i < MAX_V6_EXT; i++) {
		if (next != NEXTHDR_HOP && next != NEXTHDR_DEST)
			break;
		__u8 ext[2];
		if (bpf_skb_load_bytes(skb, off, ext, sizeof(ext)) < 0)
			return 0;
		next = ext[0];
		off += ((__u32)ext[1] + 1) * 8;
	}
	if (next == NEXTHDR_HOP || next == NEXTHDR_DEST || next == NEXTHDR_ROUTING)
		return 0; // too many options, or source routing: drop
	p->l3_hdr_len = off;
	p->proto = next;
	if (next == NEXTHDR_FRAGMENT) {
		p->proto = 0;
		p->later_frag = 1;
	}
	return 1;
}

SEC("cgroup_skb/egress")
int egress(struct __sk_buff *skb)
{
	struct counters *c = my_counters();
	if (!c)
		return 0;
	__u32 len = skb->len;
	struct packet p = {};
	int ok = 0;
	if (skb->protocol == cpu_to_be16(ETH_P_IP))
		ok = parse_v4(skb, &p);
	else if (skb->protocol == cpu_to_be16(ETH_P_IPV6))
		ok = parse_v6(skb, &p);
	else
		return 1; // not IP: nothing this policy speaks about

	__u32 payload = 0;
	if (ok) {
		if (p.later_frag) {
			// The first fragment carried the ports and was judged on
			// them; later ones may only go where some network or
			// host entry points (the key has port 0, which no endpoint
			// entry has: an address reachable only through endpoints
			// gets no later fragments, which costs nothing in practice,
			// since TCP, the only protocol endpoints allow, sizes its
			// segments to the path MTU and is not fragmented).
			struct lpm_val *v = lookup(&p.key);
			ok = v != 0 && v->flags != 0;
			payload = len - p.l3_hdr_len;
		} else if (p.proto == IPPROTO_TCP || p.proto == IPPROTO_UDP) {
			// Ports are the first 4 bytes of both headers; TCP's data
			// offset is byte 12 (a UDP datagram may be shorter than that).
			__u8 ports[4];
			__u8 doff = 0;
			__u32 l4hdr = UDP_HDR_LEN;
			if (bpf_skb_load_bytes(skb, p.l3_hdr_len, ports, sizeof(ports)) < 0) {
				ok = 0;
			} else if (p.proto == IPPROTO_TCP &&
				   bpf_skb_load_bytes(skb, p.l3_hdr_len + 12, &doff, 1) < 0) {
				ok = 0;
			} else {
				if (p.proto == IPPROTO_TCP)
					l4hdr = (__u32)(doff >> 4) * 4;
				__u16 dport = ((__u16)ports[2] << 8) | ports[3];
				key_port(&p.key, dport);
				ok = allowed(lookup(&p.key), p.proto, dport);
				if (len >= p.l3_hdr_len + l4hdr)
					payload = len - p.l3_hdr_len - l4hdr;
			}
		} else {
			struct lpm_val *v = lookup(&p.key);
			ok = v != 0 && (v->flags & ALLOW_CIDR);
		}
	}

	if (!ok) {
		__sync_fetch_and_add(&c->drop_packets, 1);
		__sync_fetch_and_add(&c->drop_bytes, len);
		return 0;
	}
	__sync_fetch_and_add(&c->tx_packets, 1);
	__sync_fetch_and_add(&c->tx_bytes, len);
	__sync_fetch_and_add(&c->tx_payload_bytes, payload);
	return 1;
}

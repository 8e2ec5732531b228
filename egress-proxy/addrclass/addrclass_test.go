package addrclass

import (
	"net/netip"
	"testing"
)

func TestClassify(t *testing.T) {
	tests := []struct {
		name string
		addr string
		want Class
	}{
		{"public v4", "93.184.216.34", Public},
		{"public v4 dns", "8.8.8.8", Public},
		{"this network", "0.0.0.0", Unspecified},
		{"this network other", "0.1.2.3", Unspecified},
		{"rfc1918 10", "10.20.1.1", Private},
		{"rfc1918 172", "172.31.255.255", Private},
		{"just outside 172.16/12", "172.32.0.1", Public},
		{"rfc1918 192.168", "192.168.1.1", Private},
		{"cgnat", "100.64.0.1", SharedCGNAT},
		{"cgnat end", "100.127.255.255", SharedCGNAT},
		{"just outside cgnat", "100.128.0.1", Public},
		{"loopback", "127.0.0.1", Loopback},
		{"loopback other", "127.255.0.9", Loopback},
		{"link local", "169.254.1.1", LinkLocal},
		{"aws imds", "169.254.169.254", Metadata},
		{"ecs credentials", "169.254.170.2", Metadata},
		{"eks pod identity", "169.254.170.23", Metadata},
		{"alibaba metadata", "100.100.100.200", Metadata},
		{"oracle metadata", "192.0.0.192", Metadata},
		{"ietf protocol assignments", "192.0.0.8", Reserved},
		{"test-net-1", "192.0.2.1", Documentation},
		{"test-net-2", "198.51.100.7", Documentation},
		{"test-net-3", "203.0.113.9", Documentation},
		{"benchmarking", "198.19.0.1", Benchmarking},
		{"6to4 relay", "192.88.99.1", Reserved},
		{"multicast", "224.0.0.1", Multicast},
		{"multicast top", "239.255.255.250", Multicast},
		{"class e", "240.0.0.1", Reserved},
		{"broadcast", "255.255.255.255", Broadcast},
		{"public v6", "2606:4700::1111", Public},
		{"v6 unspecified", "::", Unspecified},
		{"v6 loopback", "::1", Loopback},
		{"mapped loopback", "::ffff:127.0.0.1", IPv4Mapped},
		{"mapped public", "::ffff:8.8.8.8", IPv4Mapped},
		{"mapped metadata", "::ffff:169.254.169.254", Metadata},
		{"compatible", "::127.0.0.1", IPv4Compatible},
		{"compatible metadata", "::169.254.169.254", Metadata},
		{"nat64", "64:ff9b::8.8.8.8", NAT64},
		{"nat64 metadata", "64:ff9b::169.254.169.254", Metadata},
		{"nat64 local", "64:ff9b:1::1", NAT64},
		{"nat64 local metadata /96 layout", "64:ff9b:1::a9fe:a9fe", Metadata},
		{"nat64 local metadata /48 layout", "64:ff9b:1:a9fe:a9:fea9::", Metadata},
		{"discard only", "100::1", Reserved},
		{"teredo", "2001:0:4136:e378:8000:63bf:3fff:fdd2", Teredo},
		{"teredo metadata server", "2001:0:a9fe:a9fe::1", Metadata},
		{"teredo metadata client", "2001:0:4136:e378::5601:5601", Metadata},
		{"benchmarking v6", "2001:2::1", Benchmarking},
		{"orchid", "2001:20::1", Reserved},
		{"documentation v6", "2001:db8::1", Documentation},
		{"documentation 3fff", "3fff::1", Documentation},
		{"6to4", "2002:c000:0204::1", SixToFour},
		{"6to4 metadata", "2002:a9fe:a9fe::1", Metadata},
		{"srv6", "5f00::1", Reserved},
		{"ula", "fd12:3456::1", Private},
		{"aws imds v6", "fd00:ec2::254", Metadata},
		{"link local v6", "fe80::1", LinkLocal},
		{"link local v6 zone", "fe80::1%eth0", LinkLocal},
		{"site local", "fec0::1", Reserved},
		{"multicast v6", "ff02::1", Multicast},
		{"outside 2000::/3", "4000::1", Reserved},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Classify(netip.MustParseAddr(tt.addr))
			if got != tt.want {
				t.Errorf("Classify(%s): got %v, want %v", tt.addr, got, tt.want)
			}
		})
	}
	if got := Classify(netip.Addr{}); got != Invalid {
		t.Errorf("Classify(zero): got %v, want invalid", got)
	}
}

func TestEmbedded(t *testing.T) {
	tests := []struct {
		name string
		addr string
		want []string
	}{
		{"mapped", "::ffff:10.1.2.3", []string{"10.1.2.3"}},
		{"nat64", "64:ff9b::10.1.2.3", []string{"10.1.2.3"}},
		{"6to4", "2002:0a01:0203::", []string{"10.1.2.3"}},
		{"teredo", "2001:0:0a01:0203::f5fe:fdfc", []string{"10.1.2.3", "10.1.2.3"}},
		{"plain v6", "2606:4700::1", nil},
		{"v4", "10.1.2.3", nil},
		{"loopback not compatible", "::1", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Embedded(netip.MustParseAddr(tt.addr))
			if len(got) != len(tt.want) {
				t.Fatalf("Embedded(%s): got %v, want %v", tt.addr, got, tt.want)
			}
			for i := range got {
				if got[i].String() != tt.want[i] {
					t.Errorf("Embedded(%s)[%d]: got %v, want %v", tt.addr, i, got[i], tt.want[i])
				}
			}
		})
	}
}

func BenchmarkClassify(b *testing.B) {
	a := netip.MustParseAddr("93.184.216.34")
	b.ReportAllocs()
	for b.Loop() {
		if Classify(a) != Public {
			b.Fatal("not public")
		}
	}
}

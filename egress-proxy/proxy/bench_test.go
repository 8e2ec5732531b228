package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/allowlist"
)

// BenchmarkKeepAlive compares a small keep-alive GET sent directly to the
// upstream with the same GET through the proxy.
func BenchmarkKeepAlive(b *testing.B) {
	e := newEnv(b, envOpts{dnsCache: 30 * time.Second, discardLogs: true})
	e.dns.SetTTL("allowed.test", 30) // as real answers do: the proxy caches for the TTL
	direct := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	proxyURL, _ := url.Parse("http://" + e.proxyAddr)
	proxied := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL), MaxIdleConnsPerHost: 64}}
	b.Cleanup(func() {
		direct.CloseIdleConnections()
		proxied.CloseIdleConnections()
	})
	for _, bc := range []struct {
		name   string
		client *http.Client
		url    string
	}{
		{"direct", direct, "http://127.0.0.2:" + strconv.Itoa(int(e.httpPort)) + "/bench"},
		{"proxy", proxied, "http://allowed.test:" + strconv.Itoa(int(e.httpPort)) + "/bench"},
	} {
		b.Run(bc.name+"/parallel16", func(b *testing.B) {
			b.SetParallelism(8) // 16 clients on 2 cores
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := bc.client.Get(bc.url)
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			})
		})
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				resp, err := bc.client.Get(bc.url)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					b.Fatalf("status %d %s", resp.StatusCode, resp.Header.Get(DenyReasonHeader))
				}
			}
		})
	}
}

// BenchmarkTunnelThroughput downloads 64 MiB per op from a raw TCP source,
// directly and through a CONNECT tunnel (splice path).
func BenchmarkTunnelThroughput(b *testing.B) {
	const size = 64 << 20
	e := newEnv(b, envOpts{discardLogs: true})
	src := listenOn(b, "127.0.0.2")
	b.Cleanup(func() { src.Close() })
	chunk := make([]byte, 256<<10)
	go func() {
		for {
			c, err := src.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				for sent := 0; sent < size; sent += len(chunk) {
					if _, err := c.Write(chunk); err != nil {
						return
					}
				}
			}()
		}
	}()
	srcPort := portOf(src.Addr())
	if err := e.store.Apply([]*allowlist.JobPolicy{{Org: "acme", Job: "block_follower",
		Rules: []allowlist.Rule{{Host: "allowed.test", Ports: []uint16{srcPort}}}}}); err != nil {
		b.Fatal(err)
	}
	open := map[string]func() (net.Conn, io.Reader){
		"direct": func() (net.Conn, io.Reader) {
			c, err := net.Dial("tcp", src.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			return c, c
		},
		"proxy": func() (net.Conn, io.Reader) {
			c, err := net.Dial("tcp", e.proxyAddr)
			if err != nil {
				b.Fatal(err)
			}
			fmt.Fprintf(c, "CONNECT allowed.test:%d HTTP/1.1\r\nHost: allowed.test:%d\r\n\r\n", srcPort, srcPort)
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
			if err != nil || resp.StatusCode != 200 {
				b.Fatalf("CONNECT: %v %v", resp, err)
			}
			return c, br
		},
	}
	for _, name := range []string{"direct", "proxy"} {
		b.Run(name, func(b *testing.B) {
			b.SetBytes(size)
			b.ReportAllocs()
			for b.Loop() {
				c, r := open[name]()
				n, err := io.Copy(io.Discard, r)
				c.Close()
				if err != nil || n != size {
					b.Fatalf("read %d, %v, want %d", n, err, size)
				}
			}
		})
	}
}

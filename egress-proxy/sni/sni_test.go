package sni

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// clientHello captures the first flight of a real crypto/tls client.
func clientHello(t testing.TB, serverName string) []byte {
	t.Helper()
	c, s := net.Pipe()
	defer s.Close()
	go func() {
		tc := tls.Client(c, &tls.Config{ServerName: serverName, InsecureSkipVerify: serverName == ""})
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		_ = tc.Handshake() // fails when s closes
		c.Close()
	}()
	// The ClientHello is one record; read its header, then the body.
	s.SetDeadline(time.Now().Add(5 * time.Second))
	head := make([]byte, 5)
	if _, err := io.ReadFull(s, head); err != nil {
		t.Fatalf("read record header: %v", err)
	}
	body := make([]byte, int(head[3])<<8|int(head[4]))
	if _, err := io.ReadFull(s, body); err != nil {
		t.Fatalf("read record body: %v", err)
	}
	return append(head, body...)
}

// fragment splits one handshake record into records of at most n bytes.
func fragment(rec []byte, n int) []byte {
	body := rec[5:]
	var out []byte
	for len(body) > 0 {
		k := min(n, len(body))
		out = append(out, 0x16, rec[1], rec[2], byte(k>>8), byte(k))
		out = append(out, body[:k]...)
		body = body[k:]
	}
	return out
}

// withDuplicateSNI appends a second server_name extension to a hello.
func withDuplicateSNI(t testing.TB, rec []byte, name string) []byte {
	t.Helper()
	ext := []byte{0, 0, 0, byte(len(name) + 5), 0, byte(len(name) + 3), 0, 0, byte(len(name))}
	ext = append(ext, name...)
	out := append([]byte(nil), rec...)
	out = append(out, ext...)
	// Fix the record, handshake and extensions lengths.
	grow := func(off, size int) {
		v := 0
		for i := 0; i < size; i++ {
			v = v<<8 | int(out[off+i])
		}
		v += len(ext)
		for i := size - 1; i >= 0; i-- {
			out[off+i] = byte(v)
			v >>= 8
		}
	}
	grow(3, 2)
	grow(6, 3)
	// Extensions length offset: 5 + 4 + 2 + 32 + 1 + sid + 2 + cs + 1 + comp.
	p := 5 + 4 + 2 + 32
	p += 1 + int(out[p])
	p += 2 + (int(out[p])<<8 | int(out[p+1]))
	p += 1 + int(out[p])
	grow(p, 2)
	return out
}

func TestParse(t *testing.T) {
	hello := clientHello(t, "api.example.com")
	noSNI := clientHello(t, "")
	tests := []struct {
		name     string
		data     []byte
		wantName string
		wantErr  error
	}{
		{"real hello", hello, "api.example.com", nil},
		{"no sni", noSNI, "", nil},
		{"fragmented 100", fragment(hello, 100), "api.example.com", nil},
		{"fragmented 1", fragment(hello, 1), "api.example.com", nil},
		{"duplicate sni", withDuplicateSNI(t, hello, "evil.example"), "", ErrMalformed},
		{"http", []byte("GET / HTTP/1.1\r\n\r\n"), "", ErrNotTLS},
		{"ssh", []byte("SSH-2.0-OpenSSH\r\n"), "", ErrNotTLS},
		{"alert record", []byte{0x15, 3, 1, 0, 2, 2, 40}, "", ErrNotTLS},
		{"server hello type", []byte{0x16, 3, 3, 0, 4, 2, 0, 0, 0}, "", ErrMalformed},
		{"bad version", append([]byte{0x16, 9, 9}, hello[3:]...), "", ErrMalformed},
		{"zero length record", []byte{0x16, 3, 1, 0, 0}, "", ErrMalformed},
		{"truncated", hello[:len(hello)-10], "", errShort},
		{"trailing junk in record", append(append([]byte{0x16, 3, 1, byte((len(hello) - 5 + 1) >> 8), byte(len(hello) - 5 + 1)}, hello[5:]...), 0), "", ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, _, err := Parse(tt.data)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Parse: got %+v, %v, want error %v", h, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: got error %v, want name %q", err, tt.wantName)
			}
			if h.ServerName != tt.wantName {
				t.Errorf("Parse: got name %q, want %q", h.ServerName, tt.wantName)
			}
		})
	}
}

func TestPeekDoesNotConsume(t *testing.T) {
	hello := fragment(clientHello(t, "api.example.com"), 300)
	stream := append(append([]byte(nil), hello...), "rest of the stream"...)
	r := bufio.NewReaderSize(bytes.NewReader(stream), MaxHelloBytes+5)
	h, err := Peek(r)
	if err != nil || h.ServerName != "api.example.com" {
		t.Fatalf("Peek: got %+v, %v, want api.example.com", h, err)
	}
	all, _ := io.ReadAll(r)
	if !bytes.Equal(all, stream) {
		t.Errorf("after Peek: got %d bytes, want the whole %d-byte stream", len(all), len(stream))
	}
}

func TestPeekSlowClient(t *testing.T) {
	c, s := net.Pipe()
	defer c.Close()
	defer s.Close()
	go func() { c.Write([]byte{0x16, 3, 1}) }() // then stall
	s.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	_, err := Peek(bufio.NewReaderSize(s, MaxHelloBytes+5))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Peek on a stalled client: got %v, want a timeout", err)
	}
}

func TestPeekTooLarge(t *testing.T) {
	big := []byte{0x16, 3, 1, 0x40, 0x00, 1, 0x01, 0x00, 0x00} // 64 KiB message
	big = append(big, make([]byte, 0x4000-4)...)
	big = append(big, 0x16, 3, 1, 0x40, 0x00)
	big = append(big, make([]byte, 0x4000)...)
	_, err := Peek(bufio.NewReaderSize(bytes.NewReader(big), MaxHelloBytes+5))
	if !errors.Is(err, ErrMalformed) {
		t.Fatalf("Peek of an oversized hello: got %v, want ErrMalformed", err)
	}
}

func FuzzParse(f *testing.F) {
	hello := clientHello(f, "api.example.com")
	f.Add(hello)
	f.Add(fragment(hello, 64))
	f.Add(clientHello(f, ""))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, need, err := Parse(data)
		if err == nil && need != 0 {
			t.Fatalf("Parse: need %d with no error", need)
		}
		if errors.Is(err, errShort) && need <= len(data) {
			t.Fatalf("Parse: short with need %d <= len %d", need, len(data))
		}
		if err == nil && len(h.ServerName) > MaxHelloBytes {
			t.Fatalf("Parse: server name longer than the hello")
		}
	})
}

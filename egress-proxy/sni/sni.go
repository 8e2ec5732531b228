// Package sni reads the server name from the TLS ClientHello at the start
// of a CONNECT tunnel without consuming it, so the egress proxy can check
// it against the CONNECT target (no domain fronting) and then forward the
// untouched bytes.
//
// The parser is strict where leniency would let two parsers disagree:
// duplicate extensions, more than one host_name, trailing bytes and
// truncated fields are errors. It reassembles a ClientHello split across
// several TLS records, up to MaxHelloBytes.
//
// It does not terminate TLS, validate certificates or decide policy.
package sni

import (
	"bufio"
	"errors"
	"fmt"
)

// MaxHelloBytes bounds how much of a tunnel Peek inspects: a ClientHello
// with its record headers must fit.
const MaxHelloBytes = 16 * 1024

var (
	// ErrNotTLS means the first bytes are not a TLS handshake record.
	ErrNotTLS = errors.New("not a TLS handshake")
	// ErrMalformed means the bytes claim TLS but are not a well-formed
	// ClientHello.
	ErrMalformed = errors.New("malformed ClientHello")
	// errShort means more bytes are needed.
	errShort = errors.New("short ClientHello")
)

// Hello is what the proxy needs from a ClientHello.
type Hello struct {
	// ServerName is the host_name of the server_name extension, as sent
	// (not canonicalised). Empty when the extension is absent.
	ServerName string
	// HasECH reports an encrypted_client_hello extension (real or GREASE).
	HasECH bool
}

const (
	recordHandshake   = 0x16
	typeClientHello   = 0x01
	extServerName     = 0x0000
	extECH            = 0xfe0d
	nameTypeHostName  = 0x00
	recordHeaderLen   = 5
	maxRecordLen      = 1<<14 + 256
	handshakeHeadeLen = 4
)

// Peek inspects the ClientHello at the front of r without consuming it.
// r's buffer must hold at least MaxHelloBytes. It returns ErrNotTLS when the
// first byte is not a handshake record, an error wrapping ErrMalformed when
// the hello is bad or too large, or the read error (for example a deadline)
// when the hello is incomplete.
func Peek(r *bufio.Reader) (Hello, error) {
	n := 1 // one byte tells TLS from not-TLS without waiting for more
	for {
		buf, err := r.Peek(n)
		if len(buf) > 0 && buf[0] != recordHandshake {
			return Hello{}, ErrNotTLS
		}
		if err != nil {
			return Hello{}, err
		}
		h, need, perr := Parse(buf)
		if perr == nil {
			return h, nil
		}
		if !errors.Is(perr, errShort) {
			return Hello{}, perr
		}
		if need > MaxHelloBytes || need > r.Size() {
			return Hello{}, fmt.Errorf("%w: larger than %d bytes", ErrMalformed, MaxHelloBytes)
		}
		n = need
	}
}

// Parse parses a ClientHello from the front of data. When data is a valid
// prefix but incomplete, it returns an error wrapping errShort and the
// total length needed so far (which may grow as more records arrive).
func Parse(data []byte) (h Hello, need int, err error) {
	// Reassemble the handshake message from consecutive records.
	var msg []byte
	off := 0
	for {
		if len(data)-off < recordHeaderLen {
			return Hello{}, off + recordHeaderLen, errShort
		}
		if data[off] != recordHandshake {
			if off == 0 {
				return Hello{}, 0, ErrNotTLS
			}
			return Hello{}, 0, fmt.Errorf("%w: handshake interleaved with record type %d", ErrMalformed, data[off])
		}
		if data[off+1] != 3 || data[off+2] > 4 {
			return Hello{}, 0, fmt.Errorf("%w: record version %d.%d", ErrMalformed, data[off+1], data[off+2])
		}
		rlen := int(data[off+3])<<8 | int(data[off+4])
		if rlen == 0 || rlen > maxRecordLen {
			return Hello{}, 0, fmt.Errorf("%w: record length %d", ErrMalformed, rlen)
		}
		end := off + recordHeaderLen + rlen
		if len(data) < end {
			return Hello{}, end, errShort
		}
		msg = append(msg, data[off+recordHeaderLen:end]...)
		off = end
		if len(msg) >= handshakeHeadeLen {
			if msg[0] != typeClientHello {
				return Hello{}, 0, fmt.Errorf("%w: handshake type %d", ErrMalformed, msg[0])
			}
			mlen := int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3])
			if mlen > MaxHelloBytes {
				return Hello{}, 0, fmt.Errorf("%w: message length %d", ErrMalformed, mlen)
			}
			if len(msg) >= handshakeHeadeLen+mlen {
				if len(msg) != handshakeHeadeLen+mlen {
					return Hello{}, 0, fmt.Errorf("%w: bytes after the ClientHello in its records", ErrMalformed)
				}
				h, err := parseBody(msg[handshakeHeadeLen:])
				return h, 0, err
			}
		}
	}
}

// reader is a bounds-checked cursor; any short read sets bad.
type reader struct {
	b   []byte
	bad bool
}

func (r *reader) u8() int {
	if len(r.b) < 1 {
		r.bad = true
		return 0
	}
	v := int(r.b[0])
	r.b = r.b[1:]
	return v
}

func (r *reader) u16() int {
	if len(r.b) < 2 {
		r.bad = true
		return 0
	}
	v := int(r.b[0])<<8 | int(r.b[1])
	r.b = r.b[2:]
	return v
}

func (r *reader) bytes(n int) []byte {
	if len(r.b) < n {
		r.bad = true
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func parseBody(body []byte) (Hello, error) {
	r := &reader{b: body}
	r.bytes(2)  // legacy_version
	r.bytes(32) // random
	if sid := r.u8(); sid > 32 {
		return Hello{}, fmt.Errorf("%w: session id length %d", ErrMalformed, sid)
	} else {
		r.bytes(sid)
	}
	cs := r.u16()
	if cs < 2 || cs%2 != 0 {
		return Hello{}, fmt.Errorf("%w: cipher suites length %d", ErrMalformed, cs)
	}
	r.bytes(cs)
	comp := r.u8()
	if comp < 1 {
		return Hello{}, fmt.Errorf("%w: no compression methods", ErrMalformed)
	}
	r.bytes(comp)
	if r.bad {
		return Hello{}, fmt.Errorf("%w: truncated", ErrMalformed)
	}
	var h Hello
	if len(r.b) == 0 {
		return h, nil // no extensions at all
	}
	exts := &reader{b: r.bytes(r.u16())}
	if r.bad || len(r.b) != 0 {
		return Hello{}, fmt.Errorf("%w: extensions length does not match the message", ErrMalformed)
	}
	seen := make(map[int]bool, 16)
	for len(exts.b) > 0 {
		typ := exts.u16()
		data := exts.bytes(exts.u16())
		if exts.bad {
			return Hello{}, fmt.Errorf("%w: truncated extension", ErrMalformed)
		}
		if seen[typ] {
			return Hello{}, fmt.Errorf("%w: duplicate extension %d", ErrMalformed, typ)
		}
		seen[typ] = true
		switch typ {
		case extServerName:
			name, err := parseServerName(data)
			if err != nil {
				return Hello{}, err
			}
			h.ServerName = name
		case extECH:
			h.HasECH = true
		}
	}
	return h, nil
}

func parseServerName(data []byte) (string, error) {
	r := &reader{b: data}
	list := &reader{b: r.bytes(r.u16())}
	if r.bad || len(r.b) != 0 {
		return "", fmt.Errorf("%w: server_name list length", ErrMalformed)
	}
	var name string
	for len(list.b) > 0 {
		typ := list.u8()
		v := list.bytes(list.u16())
		if list.bad {
			return "", fmt.Errorf("%w: truncated server_name", ErrMalformed)
		}
		if typ != nameTypeHostName {
			continue // unknown name types are skipped (RFC 6066)
		}
		if name != "" {
			return "", fmt.Errorf("%w: more than one host_name", ErrMalformed)
		}
		if len(v) == 0 {
			return "", fmt.Errorf("%w: empty host_name", ErrMalformed)
		}
		name = string(v)
	}
	if name == "" {
		return "", fmt.Errorf("%w: server_name without host_name", ErrMalformed)
	}
	return name, nil
}

package authority

import (
	"errors"
	"testing"
)

func TestParseHostPort(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		defPort uint16
		want    string // canonical Target.String(), or "" for an error
		literal bool
	}{
		{"name", "example.com:443", 0, "example.com:443", false},
		{"uppercase", "EXAMPLE.Com:443", 0, "example.com:443", false},
		{"trailing dot", "example.com.:443", 0, "example.com:443", false},
		{"default port", "example.com", 80, "example.com:80", false},
		{"missing port", "example.com", 0, "", false},
		{"idn", "bücher.example:443", 0, "xn--bcher-kva.example:443", false},
		{"cyrillic homograph", "аpple.com:443", 0, "xn--pple-43d.com:443", false},
		{"fullwidth dot", "example．com:443", 0, "example.com:443", false},
		{"dotted quad", "127.0.0.1:80", 0, "127.0.0.1:80", true},
		{"decimal", "2130706433:80", 0, "127.0.0.1:80", true},
		{"hex", "0x7f000001:80", 0, "127.0.0.1:80", true},
		{"hex short", "0x7f.1:80", 0, "127.0.0.1:80", true},
		{"octal", "0177.0.0.1:80", 0, "127.0.0.1:80", true},
		{"short form", "127.1:80", 0, "127.0.0.1:80", true},
		{"three parts", "127.0.1:80", 0, "127.0.0.1:80", true},
		{"literal trailing dot", "127.0.0.1.:80", 0, "127.0.0.1:80", true},
		{"zero", "0:80", 0, "0.0.0.0:80", true},
		{"metadata decimal", "2852039166:80", 0, "169.254.169.254:80", true},
		{"metadata hex dotted", "0xa9.0xfe.0xa9.0xfe:80", 0, "169.254.169.254:80", true},
		{"metadata octal", "0251.0376.0251.0376:80", 0, "169.254.169.254:80", true},
		{"fullwidth digits refused", "１２７．０．０．１:80", 0, "", false},
		{"bracketed v6", "[::1]:443", 0, "[::1]:443", true},
		{"bracketed mapped", "[::ffff:127.0.0.1]:443", 0, "127.0.0.1:443", true},
		{"bracketed mapped hex", "[::ffff:7f00:1]:443", 0, "127.0.0.1:443", true},
		{"bracketed default port", "[2001:db8::1]", 443, "[2001:db8::1]:443", true},
		{"unbracketed v6", "::1:443", 0, "", false},
		{"zone id", "[fe80::1%25eth0]:443", 0, "", false},
		{"raw zone id", "[fe80::1%eth0]:443", 0, "", false},
		{"v4 in brackets", "[127.0.0.1]:80", 0, "", false},
		{"userinfo", "allowed.com@evil.com:80", 0, "", false},
		{"crlf", "allowed.com\r\nX: y:80", 0, "", false},
		{"nul", "allowed.com\x00.evil.com:80", 0, "", false},
		{"space", "allowed.com :80", 0, "", false},
		{"backslash", "evil.com\\allowed.com:80", 0, "", false},
		{"slash", "evil.com/allowed.com:80", 0, "", false},
		{"hash", "evil.com#allowed.com:80", 0, "", false},
		{"five parts", "1.2.3.4.5:80", 0, "", false},
		{"part overflow", "256.0.0.1:80", 0, "", false},
		{"last part overflow", "1.2.3.256:80", 0, "", false},
		{"decimal overflow", "4294967296:80", 0, "", false},
		{"bad octal", "08.0.0.1:80", 0, "", false},
		{"numeric tld", "foo.123:80", 0, "", false},
		{"hex tld", "foo.0x1:80", 0, "", false},
		{"port zero", "example.com:0", 0, "", false},
		{"port leading zero", "example.com:0443", 0, "", false},
		{"port sign", "example.com:+443", 0, "", false},
		{"port too big", "example.com:65536", 0, "", false},
		{"port empty", "example.com:", 0, "", false},
		{"port hex", "example.com:0x1bb", 0, "", false},
		{"double colon", "example.com:443:80", 0, "", false},
		{"empty label", "a..b:443", 0, "", false},
		{"two trailing dots", "example.com..:443", 0, "", false},
		{"leading dot", ".example.com:443", 0, "", false},
		{"underscore", "a_b.example.com:443", 0, "", false},
		{"empty", "", 0, "", false},
		{"only port", ":443", 0, "", false},
		{"percent encoded", "ex%61mple.com:443", 0, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseHostPort(tt.in, tt.defPort)
			if tt.want == "" {
				if err == nil {
					t.Fatalf("ParseHostPort(%q): got %v, want error", tt.in, got)
				}
				if !errors.Is(err, ErrInvalid) {
					t.Errorf("ParseHostPort(%q): error %v does not wrap ErrInvalid", tt.in, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseHostPort(%q): got error %v, want %s", tt.in, err, tt.want)
			}
			if got.String() != tt.want || got.IsLiteral() != tt.literal {
				t.Errorf("ParseHostPort(%q): got %s (literal %v), want %s (literal %v)", tt.in, got, got.IsLiteral(), tt.want, tt.literal)
			}
		})
	}
}

func FuzzParseHostPort(f *testing.F) {
	for _, s := range []string{"example.com:443", "[::1]:80", "0x7f.1:80", "2130706433:80", "bücher.example:443", "a@b:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseHostPort(s, 0)
		if err != nil {
			return
		}
		if got.Port == 0 {
			t.Fatalf("ParseHostPort(%q): port 0 accepted", s)
		}
		if got.IsLiteral() == (got.Name != "") {
			t.Fatalf("ParseHostPort(%q): got %+v, want exactly one of name and address", s, got)
		}
		if got.IsLiteral() && (got.Addr.Is4In6() || got.Addr.Zone() != "") {
			t.Fatalf("ParseHostPort(%q): address %v not normalised", s, got.Addr)
		}
		// The canonical form is a fixed point.
		again, err := ParseHostPort(got.String(), 0)
		if err != nil || again != got {
			t.Fatalf("ParseHostPort(%q) = %v, reparse got %v, %v", s, got, again, err)
		}
		// So is the Host field form, port 80 left out.
		host := string(got.AppendTo(nil, 80))
		if again, err := ParseHostPort(host, 80); err != nil || again != got {
			t.Fatalf("ParseHostPort(%q) = %v, Host form %q reparses as %v, %v", s, got, host, again, err)
		}
	})
}

// TestAppendTo: the Host field form of a target leaves out only the
// default port, and brackets IPv6 either way.
func TestAppendTo(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want string
	}{
		{"example.com:80", "example.com"},
		{"example.com:8080", "example.com:8080"},
		{"0x7f.1:80", "127.0.0.1"},
		{"10.0.0.1:81", "10.0.0.1:81"},
		{"[2001:db8::1]:8080", "[2001:db8::1]:8080"},
		{"[::1]:80", "[::1]"},
		{"[::1]:443", "[::1]:443"},
	} {
		target, err := ParseHostPort(tt.in, 0)
		if err != nil {
			t.Fatal(err)
		}
		if got := string(target.AppendTo([]byte("x"), 80)); got != "x"+tt.want {
			t.Errorf("%s: AppendTo(%q, 80) = %q, want %q", tt.in, "x", got, "x"+tt.want)
		}
	}
}

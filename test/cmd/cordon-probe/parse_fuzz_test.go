package main

import (
	"net"
	"net/url"
	"strings"
	"testing"
)

// FuzzParseAttempts: whatever the arguments, ParseAttempts does not panic,
// and what it accepts is well-formed for the attempt that will use it.
func FuzzParseAttempts(f *testing.F) {
	for _, s := range []string{
		"http=http://example.test/", "direct=https://[::1]:8443/x", "tcp=[fd00:ec2::254]:80",
		"udp=10.0.0.1:53", "metadata", "aws-env", "parent-env", "secret=MONAD_RPC_KEY",
		"tcp=1.2.3.4", "http=ftp://x/", "metadata=x", "=", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, arg string) {
		as, err := ParseAttempts([]string{arg})
		if err != nil {
			return
		}
		if len(as) != 1 {
			t.Fatalf("ParseAttempts(%q): got %d attempts, want 1", arg, len(as))
		}
		a := as[0]
		switch a.Kind {
		case "http", "direct":
			u, err := url.Parse(a.Target)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				t.Errorf("accepted %q: target %q is not an absolute http(s) URL", arg, a.Target)
			}
		case "tcp", "udp":
			if _, _, err := net.SplitHostPort(a.Target); err != nil {
				t.Errorf("accepted %q: target %q is not HOST:PORT", arg, a.Target)
			}
		case "secret":
			if a.Target == "" {
				t.Errorf("accepted %q with no variable name", arg)
			}
		case "metadata", "aws-env", "parent-env":
			if a.Target != "" || strings.Contains(arg, "=") {
				t.Errorf("accepted %q: %s takes no target", arg, a.Kind)
			}
		default:
			t.Errorf("accepted %q: unknown kind %q", arg, a.Kind)
		}
	})
}

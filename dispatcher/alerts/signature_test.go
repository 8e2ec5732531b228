package alerts

import (
	"encoding/hex"
	"errors"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/allowlist"
)

func TestVerify(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	body := []byte(`{"org":"acme","threshold_pct":80}`)
	now := time.Unix(1_800_000_000, 0)
	good := Sign(secret, body, now)
	other := Sign([]byte("another secret, 32 bytes long!!!"), body, now)
	tests := []struct {
		name    string
		secret  []byte
		header  string
		body    []byte
		now     time.Time
		wantErr error
	}{
		{"valid", secret, good, body, now, nil},
		{"valid within tolerance", secret, good, body, now.Add(4 * time.Minute), nil},
		{"rotated secret, second v1 matches", secret, other + ",v1=" + strings.TrimPrefix(good, good[:strings.Index(good, "v1=")+3]), body, now, nil},
		{"tampered body", secret, good, []byte(`{"org":"acme","threshold_pct":81}`), now, ErrSignatureMismatch},
		{"wrong secret", secret, other, body, now, ErrSignatureMismatch},
		{"replayed later", secret, good, body, now.Add(6 * time.Minute), ErrSignatureExpired},
		{"from the future", secret, good, body, now.Add(-6 * time.Minute), ErrSignatureExpired},
		{"timestamp changed", secret, strings.Replace(good, "t=1800000000", "t=1800000001", 1), body, now, ErrSignatureMismatch},
		{"empty", secret, "", body, now, ErrBadSignatureHeader},
		{"no v1", secret, "t=1800000000", body, now, ErrBadSignatureHeader},
		{"no t", secret, good[strings.Index(good, "v1="):], body, now, ErrBadSignatureHeader},
		{"short v1", secret, "t=1800000000,v1=abcd", body, now, ErrBadSignatureHeader},
		{"t twice", secret, "t=1800000000," + good, body, now, ErrBadSignatureHeader},
		{"signed t", secret, strings.Replace(good, "t=", "t=+", 1), body, now, ErrBadSignatureHeader},
		{"huge header", secret, good + strings.Repeat(",x=y", 300), body, now, ErrBadSignatureHeader},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := Verify(tc.secret, tc.header, tc.body, tc.now, 0)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Fatalf("got %v, want %v", err, tc.wantErr)
			}
		})
	}
}

func FuzzVerify(f *testing.F) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	now := time.Unix(1_800_000_000, 0)
	f.Add(Sign(secret, []byte("{}"), now), []byte("{}"))
	f.Add("t=1800000000,v1=00", []byte("x"))
	f.Add(",,,=,t=,v1=", []byte(""))
	f.Fuzz(func(t *testing.T, header string, body []byte) {
		if Verify(secret, header, body, now, 0) != nil {
			return
		}
		// Whatever was accepted must carry the true MAC of the body at
		// the header's own timestamp.
		var ts string
		for part := range strings.SplitSeq(header, ",") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(part), "t="); ok {
				ts = v
			}
		}
		if want := hex.EncodeToString(mac(secret, ts, body)); !strings.Contains(strings.ToLower(header), want) {
			t.Fatalf("accepted %q, which lacks the true signature %s", header, want)
		}
	})
}

func TestCheckWebhook(t *testing.T) {
	f := &allowlist.File{Org: "acme", Webhooks: []allowlist.Webhook{
		{URL: "https://hooks.slack.com/services/T0/B0/", Host: "hooks.slack.com", Port: 443, Path: "/services/T0/B0/"},
		{URL: "https://alerts.acme.example:8443/cordon", Host: "alerts.acme.example", Port: 8443, Path: "/cordon"},
	}}
	tests := []struct {
		name string
		url  string
		ok   bool
	}{
		{"under the listed path", "https://hooks.slack.com/services/T0/B0/XYZ", true},
		{"exactly the listed path", "https://hooks.slack.com/services/T0/B0/", true},
		{"explicit default port", "https://hooks.slack.com:443/services/T0/B0/XYZ", true},
		{"exact path without slash", "https://alerts.acme.example:8443/cordon", true},
		{"sub path", "https://alerts.acme.example:8443/cordon/prod", true},
		{"sibling prefix", "https://alerts.acme.example:8443/cordonx", false},
		{"other path", "https://hooks.slack.com/services/T9/B9/XYZ", false},
		{"other port", "https://hooks.slack.com:8443/services/T0/B0/XYZ", false},
		{"other host", "https://hooks.slack.com.evil.example/services/T0/B0/XYZ", false},
		{"http", "http://hooks.slack.com/services/T0/B0/XYZ", false},
		{"userinfo", "https://user:pw@hooks.slack.com/services/T0/B0/XYZ", false},
		{"query", "https://hooks.slack.com/services/T0/B0/XYZ?x=1", false},
		{"fragment", "https://hooks.slack.com/services/T0/B0/XYZ#x", false},
		{"dot dot escape", "https://hooks.slack.com/services/T0/B0/../../admin", false},
		{"encoded dot dot", "https://hooks.slack.com/services/T0/B0/%2e%2e/x", false},
		{"encoded slash", "https://hooks.slack.com/services/T0/B0%2fX", false},
		{"uppercase host", "https://HOOKS.slack.com/services/T0/B0/XYZ", false},
		{"ip literal", "https://127.0.0.1/services/T0/B0/XYZ", false},
		{"backslash", `https://hooks.slack.com/services/T0/B0/\x`, false},
		{"garbage", "://", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckWebhook(f, tc.url)
			if (err == nil) != tc.ok {
				t.Fatalf("got %v, want allowed=%v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrWebhookNotAllowed) {
				t.Fatalf("got %v, want ErrWebhookNotAllowed", err)
			}
		})
	}
	if err := CheckWebhook(nil, "https://hooks.slack.com/services/T0/B0/"); err == nil {
		t.Fatal("no allowlist file: got allowed, want refused")
	}
}

func TestPublicOnly(t *testing.T) {
	for _, tc := range []struct {
		addr string
		want bool
	}{
		{"8.8.8.8", true}, {"2606:4700::1111", true},
		{"127.0.0.1", false}, {"10.1.2.3", false}, {"169.254.169.254", false}, {"100.64.0.1", false},
		{"::1", false}, {"fd00::1", false}, {"fe80::1", false}, {"0.0.0.0", false}, {"192.168.1.1", false},
		{"172.16.0.1", false}, {"224.0.0.1", false}, {"64:ff9b::a9fe:a9fe", false},
	} {
		a := netip.MustParseAddr(tc.addr)
		if got := isPublic(a); got != tc.want {
			t.Errorf("isPublic(%s): got %v, want %v", tc.addr, got, tc.want)
		}
	}
}

func FuzzCheckWebhook(f *testing.F) {
	file := &allowlist.File{Org: "acme", Webhooks: []allowlist.Webhook{
		{Host: "hooks.slack.com", Port: 443, Path: "/services/T0/B0/"},
	}}
	f.Add("https://hooks.slack.com/services/T0/B0/XYZ")
	f.Add("https://hooks.slack.com/services/T0/B0/%2e%2e/x")
	f.Add("https://hooks.slack.com:443/services/T0/B0/")
	f.Fuzz(func(t *testing.T, raw string) {
		if CheckWebhook(file, raw) != nil {
			return
		}
		// Whatever is allowed is an https URL to the listed host and port,
		// under the listed path, with no way to climb out of it.
		u, err := url.Parse(raw)
		if err != nil || u.Scheme != "https" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
			t.Fatalf("allowed %q: %v %+v", raw, err, u)
		}
		if u.Hostname() != "hooks.slack.com" || (u.Port() != "" && u.Port() != "443") {
			t.Fatalf("allowed %q for host %q port %q", raw, u.Hostname(), u.Port())
		}
		p, err := url.PathUnescape(u.EscapedPath())
		if err != nil || !strings.HasPrefix(p, "/services/T0/B0/") || strings.Contains(p, "/..") || strings.Contains(p, "/./") {
			t.Fatalf("allowed %q with path %q", raw, p)
		}
	})
}

package dispatcherclient_test

import (
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/cordon-dev/cordon/internal/dispatcherclient"
)

func TestBaseURL(t *testing.T) {
	for _, tc := range []struct {
		name, raw, want string // want "": an error
	}{
		{"host and port", "https://dispatcher:8443", "https://dispatcher:8443"},
		{"trailing slash", "https://dispatcher:8443/", "https://dispatcher:8443"},
		{"plain http", "http://dispatcher:8443", ""},
		{"no host", "https://", ""},
		{"query", "https://dispatcher:8443?x=1", ""},
		{"fragment", "https://dispatcher:8443#x", ""},
		{"user", "https://u:p@dispatcher:8443", ""},
		{"not a URL", "://", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := dispatcherclient.BaseURL(tc.raw)
			if tc.want == "" && err == nil || tc.want != "" && (err != nil || got != tc.want) {
				t.Errorf("BaseURL(%q): got %q, %v, want %q", tc.raw, got, err, tc.want)
			}
		})
	}
}

// TestHTTPClientRefusesRedirects: a redirect is answered as it is, never
// followed, so a request cannot be sent elsewhere.
func TestHTTPClientRefusesRedirects(t *testing.T) {
	var followed atomic.Bool
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/elsewhere" {
			followed.Store(true)
			return
		}
		http.Redirect(w, r, "/elsewhere", http.StatusTemporaryRedirect)
	}))
	defer srv.Close()
	c := dispatcherclient.HTTPClient(srv.Client().Transport.(*http.Transport).TLSClientConfig, 0)
	defer c.CloseIdleConnections()
	resp, err := c.Post(srv.URL+"/v1/x", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTemporaryRedirect || followed.Load() {
		t.Errorf("got status %d (followed: %v), want %d, not followed", resp.StatusCode, followed.Load(), http.StatusTemporaryRedirect)
	}
}

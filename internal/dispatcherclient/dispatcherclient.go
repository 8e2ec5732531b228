// Package dispatcherclient is the connection every sidecar client of the
// dispatcher shares (dispatcher/ingestclient, internal/admit,
// sidecar/credsource): the check of the dispatcher's base URL, and the
// http.Client over an mTLS configuration (internal/mtls.ClientConfig).
//
// It is not any API's client: what is sent, and what an answer means, is
// each client's own.
package dispatcherclient

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// BaseURL checks that raw is the dispatcher's https://host[:port] (no
// query, fragment or user) and returns it without a trailing slash, ready
// for an API path to be appended.
func BaseURL(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", fmt.Errorf("dispatcher URL %q must be https://host[:port]", raw)
	}
	return strings.TrimRight(u.String(), "/"), nil
}

// HTTPClient returns a client over tlsConfig that bounds each request by
// timeout (if zero, no bound: the caller's context does it) and never
// follows a redirect: the dispatcher never sends one, and following it
// could send the request, with the SVID, elsewhere.
func HTTPClient(tlsConfig *tls.Config, timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			TLSClientConfig:     tlsConfig,
			ForceAttemptHTTP2:   true,
			MaxIdleConnsPerHost: 2,
			IdleConnTimeout:     90 * time.Second,
			TLSHandshakeTimeout: 10 * time.Second,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

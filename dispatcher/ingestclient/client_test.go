package ingestclient_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/dispatcher/ingestclient"
	"github.com/cordon-dev/cordon/internal/audit"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestErrorClassification(t *testing.T) {
	cases := []struct {
		name      string
		status    int
		header    string
		body      string
		want      ingestclient.Result
		wantRetry time.Duration // > 0: want *RetryableError with this After
		wantPerm  int           // > 0: want *PermanentError with this status
		wantIndex int
	}{
		{"stored", 200, "", `{"stored":3,"duplicates":1}`, ingestclient.Result{Stored: 3, Duplicates: 1}, 0, 0, 0},
		{"unavailable with retry-after", 503, "7", `{"error":"audit store unavailable"}`, ingestclient.Result{}, 7 * time.Second, 0, 0},
		{"throttled without header", 429, "", `{"error":"queue full"}`, ingestclient.Result{}, ingestclient.DefaultRetryAfter, 0, 0},
		{"absurd retry-after is capped", 503, "999999", `{}`, ingestclient.Result{}, 5 * time.Minute, 0, 0},
		{"internal error", 500, "", ``, ingestclient.Result{}, ingestclient.DefaultRetryAfter, 0, 0},
		{"unreadable 200", 200, "", `not json`, ingestclient.Result{}, ingestclient.DefaultRetryAfter, 0, 0},
		{"invalid item", 400, "", `{"error":"invalid request: item 2: event_id","index":2}`, ingestclient.Result{}, 0, 400, 2},
		{"forbidden", 403, "", `{"error":"forbidden"}`, ingestclient.Result{}, 0, 403, -1},
		{"too large", 413, "", `{"error":"too large"}`, ingestclient.Result{}, 0, 413, -1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				if r.URL.Path != "/v1/ingest/events" || !strings.HasPrefix(string(b), `{"events":[`) {
					t.Errorf("got %s %s, want the events endpoint and body", r.URL.Path, b)
				}
				if tc.header != "" {
					w.Header().Set("Retry-After", tc.header)
				}
				w.WriteHeader(tc.status)
				io.WriteString(w, tc.body)
			}))
			defer srv.Close()
			c := ingestclient.New(srv.URL, srv.Client().Transport.(*http.Transport).TLSClientConfig)
			defer c.Close()
			res, err := c.SendEvents(context.Background(), []audit.Event{{EventID: audit.NewID()}})
			var re *ingestclient.RetryableError
			var pe *ingestclient.PermanentError
			switch {
			case tc.wantRetry > 0:
				if !errors.As(err, &re) || re.After != tc.wantRetry {
					t.Errorf("got %v, want *RetryableError after %s", err, tc.wantRetry)
				}
			case tc.wantPerm > 0:
				if !errors.As(err, &pe) || pe.Status != tc.wantPerm || pe.Index != tc.wantIndex {
					t.Errorf("got %#v, want *PermanentError %d index %d", err, tc.wantPerm, tc.wantIndex)
				}
			default:
				if err != nil || res != tc.want {
					t.Errorf("got %+v, %v; want %+v, nil", res, err, tc.want)
				}
			}
		})
	}
}

func TestUnreachableIsRetryable(t *testing.T) {
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	url, cfg := srv.URL, srv.Client().Transport.(*http.Transport).TLSClientConfig
	srv.Close()
	c := ingestclient.New(url, cfg, ingestclient.WithTimeout(2*time.Second))
	defer c.Close()
	_, err := c.SendUsage(context.Background(), nil)
	var re *ingestclient.RetryableError
	if !errors.As(err, &re) || re.Status != 0 {
		t.Errorf("got %v, want *RetryableError with no status", err)
	}
}

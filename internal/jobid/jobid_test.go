package jobid_test

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/jobid"
	"github.com/cordon-dev/cordon/test/spiffedev"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var td = spiffeid.RequireTrustDomainFromString("cordon.test")

func TestParse(t *testing.T) {
	long := strings.Repeat("a", 63)
	cases := []struct {
		name          string
		id            string
		wantOrg, want string
		wantErr       string
	}{
		{"job", "spiffe://cordon.test/org/acme/job/etl-1", "acme", "etl-1", ""},
		{"underscore inside", "spiffe://cordon.test/org/a_b/job/c_d", "a_b", "c_d", ""},
		{"63 chars", "spiffe://cordon.test/org/" + long + "/job/" + long, long, long, ""},
		{"64 chars", "spiffe://cordon.test/org/" + long + "a/job/x", "", "", "not a job identity"},
		{"other trust domain", "spiffe://evil.test/org/acme/job/etl", "", "", "not in trust domain"},
		{"trust domain suffix", "spiffe://cordon.test.evil/org/acme/job/etl", "", "", "not in trust domain"},
		{"dispatcher", "spiffe://cordon.test/dispatcher", "", "", "not a job identity"},
		{"trust domain only", "spiffe://cordon.test", "", "", "not a job identity"},
		{"extra segment", "spiffe://cordon.test/org/acme/job/etl/x", "", "", "not a job identity"},
		{"swapped keywords", "spiffe://cordon.test/job/acme/org/etl", "", "", "not a job identity"},
		{"uppercase keyword", "spiffe://cordon.test/ORG/acme/job/etl", "", "", "not a job identity"},
		{"leading dash", "spiffe://cordon.test/org/-acme/job/etl", "", "", "not a job identity"},
		{"trailing underscore", "spiffe://cordon.test/org/acme/job/etl_", "", "", "not a job identity"},
		{"dot segment", "spiffe://cordon.test/org/acme/job/..", "", "", "parse SPIFFE ID"},
		{"empty segment", "spiffe://cordon.test/org//job/etl", "", "", "parse SPIFFE ID"},
		{"percent escape", "spiffe://cordon.test/org/ac%2fme/job/etl", "", "", "parse SPIFFE ID"},
		{"query", "spiffe://cordon.test/org/acme/job/etl?x=1", "", "", "parse SPIFFE ID"},
		{"not spiffe", "https://cordon.test/org/acme/job/etl", "", "", "parse SPIFFE ID"},
		{"empty", "", "", "", "parse SPIFFE ID"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			j, err := jobid.Parse(tc.id, td)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %+v, %v; want error containing %q", j, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("got error %v, want org %q job %q", err, tc.wantOrg, tc.want)
			}
			if j.Org != tc.wantOrg || j.Job != tc.want || j.String() != tc.id {
				t.Errorf("got org %q job %q id %s, want %q %q %s", j.Org, j.Job, j, tc.wantOrg, tc.want, tc.id)
			}
		})
	}
}

func TestFromIDZero(t *testing.T) {
	if _, err := jobid.FromID(spiffeid.ID{}, td); err == nil {
		t.Error("zero ID: got nil error, want one")
	}
	id := spiffeid.RequireFromString("spiffe://cordon.test/org/a/job/b")
	if _, err := jobid.FromID(id, spiffeid.TrustDomain{}); err == nil {
		t.Error("zero trust domain: got nil error, want one")
	}
}

func TestFromPeer(t *testing.T) {
	ca, err := spiffedev.NewCA(td.Name())
	if err != nil {
		t.Fatal(err)
	}
	leaf := func(t *testing.T, id spiffeid.ID) *x509.Certificate {
		svid, err := ca.MintX509SVID(id, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		return svid.Certificates[0]
	}
	jobID, err := ca.JobID("acme", "etl")
	if err != nil {
		t.Fatal(err)
	}
	jobCert := leaf(t, jobID)
	cases := []struct {
		name    string
		state   *tls.ConnectionState
		wantErr string
	}{
		{"plain HTTP", nil, "no client certificate"},
		{"no client certificate", &tls.ConnectionState{}, "no client certificate"},
		{"job SVID", &tls.ConnectionState{PeerCertificates: []*x509.Certificate{jobCert}}, ""},
		{"dispatcher SVID", &tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf(t, spiffeid.RequireFromSegments(td, "dispatcher"))}}, "not a job identity"},
		{"certificate without SPIFFE ID", &tls.ConnectionState{PeerCertificates: []*x509.Certificate{{}}}, "no SPIFFE ID"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := http.NewRequest("POST", "https://d/", nil)
			r.TLS = tc.state
			j, err := jobid.FromPeer(r, td)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %+v, %v; want error containing %q", j, err, tc.wantErr)
				}
				return
			}
			if err != nil || j.Org != "acme" || j.Job != "etl" {
				t.Fatalf("got %+v, %v; want acme/etl", j, err)
			}
		})
	}
}

var slugRE = regexp.MustCompile(`^[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?$`)

func TestIsSlugMatchesAllowlistRule(t *testing.T) {
	for _, s := range []string{"", "a", "-", "_", "a-", "a_b", "A", "a.b", "é", strings.Repeat("x", 63), strings.Repeat("x", 64), "0-0", "a\x00"} {
		if got, want := jobid.IsSlug(s), slugRE.MatchString(s); got != want {
			t.Errorf("IsSlug(%q) = %v, want %v", s, got, want)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"spiffe://cordon.test/org/acme/job/etl",
		"spiffe://cordon.test/org/acme/job/etl/x",
		"spiffe://cordon.test/dispatcher",
		"spiffe://evil.test/org/acme/job/etl",
		"spiffe://cordon.test/org/a-/job/b",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		j, err := jobid.Parse(s, td)
		if err != nil {
			return
		}
		// Whatever is accepted is exactly the canonical job ID of its parts.
		if !jobid.IsSlug(j.Org) || !jobid.IsSlug(j.Job) || !slugRE.MatchString(j.Org) || !slugRE.MatchString(j.Job) {
			t.Fatalf("accepted %q with org %q job %q", s, j.Org, j.Job)
		}
		if want := "spiffe://cordon.test/org/" + j.Org + "/job/" + j.Job; s != want {
			t.Fatalf("accepted %q, which is not the canonical %q", s, want)
		}
	})
}

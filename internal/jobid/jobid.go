// Package jobid is the one place that turns a job's SPIFFE ID,
// spiffe://TD/org/ORG/job/JOB, into its org and job, for every dispatcher
// API a sidecar calls over mTLS (ingest, admission, credentials).
//
// It is for authorization: the org and job it returns are what the caller
// may act on, so it refuses anything that is not exactly that shape in
// exactly the expected trust domain. It is not a SPIFFE ID parser in
// general (go-spiffe's spiffeid is), and it does not verify certificates:
// FromPeer trusts that the TLS handshake already verified the chain.
package jobid

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Job is an authenticated job identity.
type Job struct {
	// ID is the full SPIFFE ID.
	ID spiffeid.ID
	// Org and Job are the slugs from the ID's path.
	Org, Job string
}

// String is the SPIFFE ID.
func (j Job) String() string { return j.ID.String() }

// ErrNoPeer is returned by FromPeer when the request carries no verified
// client certificate.
var ErrNoPeer = errors.New("no client certificate: call over mTLS with the sidecar's X.509 SVID")

// FromID returns the org and job of id, a job identity in td.
func FromID(id spiffeid.ID, td spiffeid.TrustDomain) (Job, error) {
	if id.IsZero() {
		return Job{}, errors.New("empty SPIFFE ID")
	}
	if td.IsZero() {
		return Job{}, errors.New("no trust domain configured to check job identities against")
	}
	if !id.MemberOf(td) {
		return Job{}, fmt.Errorf("%s is not in trust domain %s", id, td)
	}
	org, job, ok := splitPath(id.Path())
	if !ok {
		return Job{}, fmt.Errorf("%s is not a job identity: want spiffe://%s/org/ORG/job/JOB with ORG and JOB %s", id, td, SlugRule)
	}
	return Job{ID: id, Org: org, Job: job}, nil
}

// Parse parses s as a SPIFFE ID and returns its org and job (FromID).
func Parse(s string, td spiffeid.TrustDomain) (Job, error) {
	id, err := spiffeid.FromString(s)
	if err != nil {
		return Job{}, fmt.Errorf("parse SPIFFE ID %q: %w", s, err)
	}
	return FromID(id, td)
}

// FromPeer returns the job identity of the request's client: the SPIFFE ID
// of the leaf of the peer chain the TLS handshake verified. The server's
// TLS config must verify client certificates (mtls.ServerConfig does);
// FromPeer does not.
func FromPeer(r *http.Request, td spiffeid.TrustDomain) (Job, error) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return Job{}, ErrNoPeer
	}
	id, err := x509svid.IDFromCert(r.TLS.PeerCertificates[0])
	if err != nil {
		return Job{}, fmt.Errorf("client certificate has no SPIFFE ID: %w", err)
	}
	return FromID(id, td)
}

// splitPath splits "/org/ORG/job/JOB".
func splitPath(p string) (org, job string, ok bool) {
	seg := strings.Split(strings.TrimPrefix(p, "/"), "/")
	if len(seg) != 4 || seg[0] != "org" || seg[2] != "job" || !IsSlug(seg[1]) || !IsSlug(seg[3]) {
		return "", "", false
	}
	return seg[1], seg[3], true
}

// SlugRule says what IsSlug accepts, for error messages.
const SlugRule = "1 to 63 lowercase letters, digits, '-' or '_', starting and ending with a letter or digit"

// IsSlug reports whether s is an org or job name,
// ^[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?$: the rule internal/allowlist
// applies to the names in its files and the schema's CHECKs.
func IsSlug(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || (c == '-' || c == '_') && i > 0 && i < len(s)-1
		if !ok {
			return false
		}
	}
	return true
}

// Package spiffedev is a development SPIFFE identity provider: an in-memory
// CA that issues X.509-SVIDs (spiffe://TD/org/ORG/job/JOB and service IDs)
// with short lifetimes. Tests use it to mint identities directly; the
// Workload API server in this package serves them over a unix socket where
// SPIRE is absent (make demo, e2e).
//
// It is for tests and local runs only: keys live in memory and the CA has no
// revocation.
package spiffedev

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// CA is an in-memory SPIFFE certificate authority for one trust domain.
type CA struct {
	td   spiffeid.TrustDomain
	cert *x509.Certificate
	key  crypto.Signer
}

// NewCA creates a CA for the trust domain td (for example "cordon.test").
func NewCA(td string) (*CA, error) {
	trustDomain, err := spiffeid.TrustDomainFromString(td)
	if err != nil {
		return nil, fmt.Errorf("trust domain %q: %w", td, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{Organization: []string{"cordon dev CA"}, CommonName: td},
		URIs:                  []*url.URL{trustDomain.ID().URL()},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{td: trustDomain, cert: cert, key: key}, nil
}

// TrustDomain is the CA's trust domain.
func (ca *CA) TrustDomain() spiffeid.TrustDomain { return ca.td }

// Bundle is the trust bundle holding the CA certificate.
func (ca *CA) Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(ca.td, []*x509.Certificate{ca.cert})
}

// Certificate is the CA certificate.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// JobID is spiffe://TD/org/ORG/job/JOB, the identity of one job's sidecar.
func (ca *CA) JobID(org, job string) (spiffeid.ID, error) {
	return spiffeid.FromSegments(ca.td, "org", org, "job", job)
}

// MintX509SVID issues an X.509-SVID for id (which must be in the CA's trust
// domain), valid for ttl. If ttl is zero, one hour.
func (ca *CA) MintX509SVID(id spiffeid.ID, ttl time.Duration) (*x509svid.SVID, error) {
	if !id.MemberOf(ca.td) {
		return nil, fmt.Errorf("mint %s: not in trust domain %s", id, ca.td)
	}
	if ttl == 0 {
		ttl = time.Hour
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		URIs:         []*url.URL{id.URL()},
		NotBefore:    now.Add(-30 * time.Second),
		NotAfter:     now.Add(ttl),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return nil, fmt.Errorf("mint %s: %w", id, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{cert}, PrivateKey: key}, nil
}

// TLSCertificate converts an SVID into a tls.Certificate (leaf first).
func TLSCertificate(s *x509svid.SVID) tls.Certificate {
	c := tls.Certificate{PrivateKey: s.PrivateKey, Leaf: s.Certificates[0]}
	for _, cert := range s.Certificates {
		c.Certificate = append(c.Certificate, cert.Raw)
	}
	return c
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err)
	}
	return n
}

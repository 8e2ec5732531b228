package server

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/cordon-dev/cordon/internal/jobid"
)

// DefaultGatewayPath is the SPIFFE ID path of the egress gateway, which gets
// every job's policy of its trust domain.
const DefaultGatewayPath = "/cordon/egress-gateway"

// Kind is what an authenticated peer may fetch.
type Kind int

const (
	// KindNone gets nothing: the stream is refused.
	KindNone Kind = iota
	// KindJob is one job's sidecar: it gets egress/<org>/<job> only.
	KindJob
	// KindGateway is an egress gateway: it gets every job of its trust domain.
	KindGateway
)

func (k Kind) String() string {
	switch k {
	case KindJob:
		return "job"
	case KindGateway:
		return "gateway"
	default:
		return "none"
	}
}

// Identity is an authenticated peer and what it is entitled to.
type Identity struct {
	ID   spiffeid.ID
	Kind Kind
	// Org and Job are set for KindJob.
	Org, Job string
}

// Classify decides what id may fetch: spiffe://td/org/ORG/job/JOB is that
// job, spiffe://td<gatewayPath> is the gateway, anything else (another trust
// domain, another path, extra segments) is KindNone.
func Classify(id spiffeid.ID, td spiffeid.TrustDomain, gatewayPath string) Identity {
	ident := Identity{ID: id}
	if id.IsZero() || !id.MemberOf(td) {
		return ident
	}
	if gatewayPath != "" && id.Path() == gatewayPath {
		ident.Kind = KindGateway
		return ident
	}
	if j, err := jobid.FromID(id, td); err == nil {
		ident.Kind, ident.Org, ident.Job = KindJob, j.Org, j.Job
	}
	return ident
}

var errNoPeerID = errors.New("no authenticated SPIFFE ID on the connection")

// peerID is the SPIFFE ID of the mTLS peer of a gRPC stream. The TLS layer
// (go-spiffe's VerifyPeerCertificate) has already verified the chain
// against the trust bundle.
func peerID(ctx context.Context) (spiffeid.ID, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return spiffeid.ID{}, errNoPeerID
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return spiffeid.ID{}, errNoPeerID
	}
	return idFromCert(info.State.PeerCertificates[0])
}

func idFromCert(c *x509.Certificate) (spiffeid.ID, error) {
	id, err := x509svid.IDFromCert(c)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("peer certificate: %w", err)
	}
	return id, nil
}

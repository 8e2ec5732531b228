package allowlist

import (
	"errors"
	"testing"
)

func TestLoadDirDesignExample(t *testing.T) {
	s, err := LoadDir("testdata/valid")
	if err != nil {
		t.Fatalf("LoadDir: %v", err)
	}
	p, err := s.Policy("acme", "price_alert")
	if err != nil {
		t.Fatalf("Policy: %v", err)
	}
	if got, want := len(p.Rules), 3; got != want {
		t.Fatalf("price_alert rules: got %d, want %d: %+v", got, want, p.Rules)
	}
	if got, want := p.Rules[2].Source, "webhook:https://hooks.slack.com/services/T0/B0/"; got != want {
		t.Errorf("webhook rule source: got %q, want %q", got, want)
	}
	if _, err := s.Policy("acme", "nope"); !errors.Is(err, ErrUnknownJob) || errors.Is(err, ErrUnknownOrg) {
		t.Errorf("unknown job: got %v, want ErrUnknownJob only", err)
	}
	if _, err := s.Policy("nope", "x"); !errors.Is(err, ErrUnknownJob) || !errors.Is(err, ErrUnknownOrg) {
		t.Errorf("unknown org: got %v, want ErrUnknownOrg and ErrUnknownJob", err)
	}
}

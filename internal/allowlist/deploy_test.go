package allowlist

import (
	"slices"
	"strings"
	"testing"
)

// TestDeployAllowlists loads the shipped example allowlists: they must lint
// clean (no errors, no warnings) and give the seed jobs the access the seeds
// describe.
func TestDeployAllowlists(t *testing.T) {
	s, err := LoadDir("../../deploy/allowlists")
	if err != nil {
		t.Fatalf("deploy/allowlists does not load:\n%v", err)
	}
	if w := s.Warnings(); len(w) > 0 {
		t.Errorf("deploy/allowlists has warnings:\n%v", w)
	}
	tests := []struct {
		job      string
		class    Class
		wantHost string // a host the job must reach
		denyHost string // a host it must not
	}{
		{"block_follower", ClassPlatform, "rpc.monad.example", "hooks.slack.com"},
		{"cryo_ingest", ClassPlatform, "rpc.monad.example", "hooks.slack.com"},
		{"price_alert", ClassUser, "hooks.slack.com", "rpc.monad.example"},
	}
	for _, tc := range tests {
		t.Run(tc.job, func(t *testing.T) {
			p, err := s.Policy("acme", tc.job)
			if err != nil {
				t.Fatal(err)
			}
			if p.Class != tc.class || p.Mode != ModeEnforce {
				t.Errorf("class, mode: got %s, %s; want %s, enforce", p.Class, p.Mode, tc.class)
			}
			hosts := map[string]bool{}
			for _, r := range p.Rules {
				hosts[r.Host] = true
			}
			if !hosts[tc.wantHost] {
				t.Errorf("rules: got no %s, want it: %+v", tc.wantHost, p.Rules)
			}
			if hosts[tc.denyHost] {
				t.Errorf("rules: got %s, want it absent", tc.denyHost)
			}
			if !slices.ContainsFunc(p.Rules, func(r Rule) bool { return strings.Contains(r.Host, ".s3.") }) {
				t.Errorf("rules: got no S3 (platform storage) host, want one")
			}
		})
	}
}

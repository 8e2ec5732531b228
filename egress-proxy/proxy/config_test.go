package proxy

import (
	"strings"
	"testing"
)

func TestParseUnsafeCIDR(t *testing.T) {
	if p, err := ParseUnsafeCIDR("127.0.0.0/8"); err != nil || p.String() != "127.0.0.0/8" {
		t.Errorf("127.0.0.0/8: got %v, %v", p, err)
	}
	if _, err := ParseUnsafeCIDR("10.0.0.1/8"); err == nil || !strings.Contains(err.Error(), "did you mean 10.0.0.0/8") {
		t.Errorf("ParseUnsafeCIDR with host bits: got %v, want the masked prefix suggested", err)
	}
	if _, err := ParseUnsafeCIDR("10.0.0.0"); err == nil {
		t.Error("ParseUnsafeCIDR without a length: got nil error")
	}
}

package terraform

import (
	"context"
	"os/exec"
	"testing"
	"time"
)

// TestTerraformFmt runs terraform fmt -check over every module where the
// terraform binary is installed (it needs no provider and no network).
func TestTerraformFmt(t *testing.T) {
	tf, err := exec.LookPath("terraform")
	if err != nil {
		t.Skip("terraform is not installed (Debian does not package it): the HCL checks above still ran; install it from HashiCorp's apt repository to check formatting")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, tf, "fmt", "-check", "-recursive", "-diff", "modules").CombinedOutput()
	if err != nil {
		t.Errorf("terraform fmt -check -recursive modules: %v (run terraform fmt -recursive deploy/terraform)\n%s", err, out)
	}
}

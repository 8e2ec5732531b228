package rbac

import (
	"strings"
	"testing"
)

// TestMatrix is the permission matrix: every role × action × resource,
// one named case each. A pair missing from want fails the test, so adding a
// role, action or resource forces a decision here.
func TestMatrix(t *testing.T) {
	const (
		y = true
		n = false
	)
	// want[resource][action] = {reader, writer, admin}
	want := map[Resource]map[Action][3]bool{
		Runs:          {View: {y, y, y}, Cancel: {n, y, y}, Manage: {n, n, n}},
		Logs:          {View: {y, y, y}, Cancel: {n, n, n}, Manage: {n, n, n}},
		Usage:         {View: {y, y, y}, Cancel: {n, n, n}, Manage: {n, n, n}},
		EgressDenials: {View: {y, y, y}, Cancel: {n, n, n}, Manage: {n, n, n}},
		Allowlists:    {View: {y, y, y}, Cancel: {n, n, n}, Manage: {n, n, n}},
		AuditEvents:   {View: {n, n, y}, Cancel: {n, n, n}, Manage: {n, n, n}},
		Users:         {View: {n, n, y}, Cancel: {n, n, n}, Manage: {n, n, y}},
		Settings:      {View: {n, n, n}, Cancel: {n, n, n}, Manage: {n, n, y}},
	}
	cases := 0
	for _, res := range Resources {
		for _, act := range Actions {
			row, ok := want[res][act]
			if !ok {
				t.Fatalf("matrix test has no row for %s %s", act, res)
			}
			for i, role := range Roles {
				cases++
				t.Run(string(role)+"/"+string(act)+"/"+string(res), func(t *testing.T) {
					d := Allow(role, act, res)
					if d.Allowed != row[i] {
						t.Fatalf("Allow(%s, %s, %s).Allowed: got %v, want %v (reason %q)", role, act, res, d.Allowed, row[i], d.Reason)
					}
					if d.Reason == "" {
						t.Errorf("Allow(%s, %s, %s): got empty reason, want one", role, act, res)
					}
					wantScope := ScopeNone
					if row[i] {
						wantScope = ScopeOrg
					}
					if d.Scope != wantScope {
						t.Errorf("Allow(%s, %s, %s).Scope: got %q, want %q", role, act, res, d.Scope, wantScope)
					}
				})
			}
		}
	}
	if want := len(Roles) * len(Actions) * len(Resources); cases != want {
		t.Fatalf("cases: got %d, want %d", cases, want)
	}
}

func TestDeniesWhatIsNotInTheMatrix(t *testing.T) {
	for _, tc := range []struct {
		name     string
		role     Role
		action   Action
		resource Resource
		reason   string
	}{
		{"empty role", "", View, Runs, "unknown role"},
		{"role in upper case", "ADMIN", View, Runs, "unknown role"},
		{"seed role name", "TENANT_ADMIN", View, AuditEvents, "unknown role"},
		{"role with space", "admin ", View, Runs, "unknown role"},
		{"unknown action", Admin, "delete", Runs, "no role may"},
		{"unknown resource", Admin, View, "secrets", "no role may"},
		{"empty action and resource", Admin, "", "", "no role may"},
		{"allowlist change is IaC only", Admin, Manage, Allowlists, "IaC"},
		{"long hostile role is truncated", Role(strings.Repeat("x", 500)), View, Runs, "..."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := Allow(tc.role, tc.action, tc.resource)
			if d.Allowed {
				t.Fatalf("Allow(%q, %q, %q): got allowed, want denied", tc.role, tc.action, tc.resource)
			}
			if !strings.Contains(d.Reason, tc.reason) {
				t.Errorf("reason: got %q, want it to contain %q", d.Reason, tc.reason)
			}
			if len(d.Reason) > 200 {
				t.Errorf("reason length: got %d, want <= 200", len(d.Reason))
			}
		})
	}
}

func TestParseRole(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Role
		ok   bool
	}{
		{"reader", Reader, true},
		{"writer", Writer, true},
		{"admin", Admin, true},
		{"Admin", "", false},
		{"root", "", false},
		{"", "", false},
		{"reader\x00", "", false},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseRole(tc.in)
			if (err == nil) != tc.ok || got != tc.want {
				t.Fatalf("ParseRole(%q): got %q, %v; want %q, ok=%v", tc.in, got, err, tc.want, tc.ok)
			}
		})
	}
}

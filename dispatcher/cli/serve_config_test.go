package cli

import (
	"strings"
	"testing"
	"time"
)

func TestServeConfigValidate(t *testing.T) {
	base := func() ServeConfig {
		c := ServeConfig{Database: "postgres://x", Listen: ":8443", TrustDomain: "cordon.test"}
		c.defaults()
		return c
	}
	user := func(c *ServeConfig) {
		c.UserListen, c.OIDCIssuer, c.OIDCAudiences, c.UserInsecureHTTP = ":8080", "https://issuer", []string{"app"}, true
	}
	cases := []struct {
		name string
		edit func(*ServeConfig)
		want string // "" means valid
	}{
		{"minimal", func(*ServeConfig) {}, ""},
		{"no database", func(c *ServeConfig) { c.Database = "" }, "--db"},
		{"no listen", func(c *ServeConfig) { c.Listen = "" }, "--listen"},
		{"bad trust domain", func(c *ServeConfig) { c.TrustDomain = "Cordon Test" }, "--trust-domain"},
		{"credentials", func(c *ServeConfig) {
			c.DataRoleARNTemplate, c.DatasetsRoots = "arn:aws:iam::123456789012:role/cordon-data-{org}", []string{"s3://trace-data/{org}/"}
		}, ""},
		{"role without org", func(c *ServeConfig) {
			c.DataRoleARNTemplate, c.DatasetsRoots = "arn:aws:iam::123456789012:role/cordon-data", []string{"s3://trace-data/{org}/"}
		}, "--data-role-arn-template"},
		{"role without roots", func(c *ServeConfig) { c.DataRoleARNTemplate = "arn:aws:iam::123456789012:role/cordon-data-{org}" }, "--datasets-root"},
		{"roots without role", func(c *ServeConfig) { c.DatasetsRoots = []string{"s3://trace-data/{org}/"} }, "--data-role-arn-template"},
		{"duration too long", func(c *ServeConfig) {
			c.DataRoleARNTemplate, c.DatasetsRoots = "arn:aws:iam::123456789012:role/cordon-data-{org}", []string{"s3://trace-data/{org}/"}
			c.CredentialsDuration = 12 * time.Hour
		}, "--credentials-duration"},
		{"user side behind a load balancer", user, ""},
		{"user side without issuer", func(c *ServeConfig) { user(c); c.OIDCIssuer = "" }, "--oidc-issuer"},
		{"user side without audience", func(c *ServeConfig) { user(c); c.OIDCAudiences = nil }, "--oidc-audience"},
		{"user side without TLS", func(c *ServeConfig) { user(c); c.UserInsecureHTTP = false }, "--user-tls-cert"},
		{"user side with both", func(c *ServeConfig) { user(c); c.UserTLSCert, c.UserTLSKey = "c", "k" }, "--user-insecure-http"},
		{"oidc without user side", func(c *ServeConfig) { c.OIDCIssuer = "https://issuer" }, "--user-listen"},
		{"replicas without cursor key", func(c *ServeConfig) { user(c); c.Replicas = 2 }, "--cursor-key-file"},
		{"replicas with cursor key", func(c *ServeConfig) { user(c); c.Replicas, c.CursorKeyFile = 2, "/k" }, ""},
		{"zero replicas", func(c *ServeConfig) { c.Replicas = -1 }, "--replicas"},
		{"negative interval", func(c *ServeConfig) { c.AnomalyEvery = -time.Second }, "--anomaly-every"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := base()
			tc.edit(&c)
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("got %v, want valid", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("got %v, want an error naming %s", err, tc.want)
			}
		})
	}
}

package jobrun

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/cordon-dev/cordon/sidecar/secrets"
)

// DefaultProxyURL is where the agent serves the egress proxy
// (DESIGN.md step 3).
const DefaultProxyURL = "http://127.0.0.1:3128"

// DefaultNoProxy keeps loopback traffic off the proxy: the job's own local
// servers, and nothing else. Metadata and private addresses stay proxied so
// that the proxy denies them.
const DefaultNoProxy = "localhost,127.0.0.1,::1"

// proxyVars are set by Cordon in both spellings, because tools disagree on
// which one they read (curl reads only lower-case http_proxy).
var proxyVars = []string{"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"}

// ExtraVar is an environment variable Cordon itself gives the job besides
// its secrets, for example the scoped-credentials endpoint of
// sidecar/credserver (AWS_CONTAINER_CREDENTIALS_FULL_URI and
// AWS_CONTAINER_AUTHORIZATION_TOKEN), which may use names that are removed
// from the inherited env. Secret values are also redacted from the output.
type ExtraVar struct {
	Name   string
	Value  string
	Secret bool
}

// envNameRE is a portable environment variable name.
var envNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// checkExtra refuses extra variables with invalid names or names that
// collide with a secret, a proxy variable or each other.
func checkExtra(vars []secrets.Var, extra []ExtraVar) error {
	seen := make(map[string]bool, len(vars)+len(extra))
	for _, v := range vars {
		seen[v.Env] = true
	}
	for _, e := range extra {
		if !envNameRE.MatchString(e.Name) {
			return fmt.Errorf("extra env var %q: not a valid name", e.Name)
		}
		up := strings.ToUpper(e.Name)
		if strings.HasSuffix(up, "_PROXY") || up == "PATH" || strings.HasPrefix(up, "LD_") {
			return fmt.Errorf("extra env var %s: reserved", e.Name)
		}
		if seen[e.Name] {
			return fmt.Errorf("extra env var %s: set twice (or also a secret)", e.Name)
		}
		seen[e.Name] = true
	}
	return nil
}

// ChildEnv builds the job's environment: base (normally the shim's own env)
// minus the task's AWS credential variables, minus any proxy and
// SPIFFE_ENDPOINT_SOCKET variables, plus the proxy variables pointing at
// proxyURL (both cases), the secrets and the extra variables. Every name
// appears once: an inherited variable never doubles one Cordon sets.
func ChildEnv(base []string, vars []secrets.Var, extra []ExtraVar, proxyURL, noProxy string) []string {
	env := make([]string, 0, len(base)+len(vars)+len(extra)+len(proxyVars))
	secretNames := make(map[string]bool, len(vars)+len(extra))
	for _, v := range vars {
		secretNames[v.Env] = true
	}
	for _, e := range extra {
		secretNames[e.Name] = true
	}
	for _, kv := range base {
		name, _, ok := strings.Cut(kv, "=")
		if !ok || name == "" {
			continue // malformed entries are dropped, never passed on
		}
		if dropFromChild(name) || secretNames[name] {
			continue
		}
		env = append(env, kv)
	}
	env = append(env,
		"HTTP_PROXY="+proxyURL, "HTTPS_PROXY="+proxyURL, "NO_PROXY="+noProxy,
		"http_proxy="+proxyURL, "https_proxy="+proxyURL, "no_proxy="+noProxy,
	)
	for _, v := range vars {
		env = append(env, v.Env+"="+v.Value)
	}
	for _, e := range extra {
		env = append(env, e.Name+"="+e.Value)
	}
	return env
}

// dropFromChild reports whether an inherited variable must not reach the
// job. Proxy variables are compared case-insensitively so that a stale
// Http_Proxy cannot shadow Cordon's; secret names are dropped too so an
// inherited variable never doubles one.
func dropFromChild(name string) bool {
	up := strings.ToUpper(name)
	if secrets.IsTaskCredentialVar(up) {
		return true
	}
	switch up {
	case "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "FTP_PROXY", "SPIFFE_ENDPOINT_SOCKET":
		return true
	}
	return false
}

package secrets

import (
	"fmt"
	"sort"
	"strings"
)

// maxNameLen bounds a secret name. AWS Secrets Manager allows 512 characters
// for the whole path; an env var name longer than this is a mistake.
const maxNameLen = 256

// EnvName converts a declared secret name into the environment variable the
// job reads: ASCII letters are upper-cased and '-' and '.' become '_'
// (monad_rpc_key -> MONAD_RPC_KEY, "db-password" -> DB_PASSWORD). A name
// that cannot become a portable env var (empty, too long, starting with a
// digit, or holding any other byte) is an error, as is a name whose
// converted form is reserved (see Reserved). The error quotes the name,
// never a value.
func EnvName(name string) (string, error) {
	if name == "" {
		return "", fmt.Errorf("secret name is empty: declare names like monad_rpc_key")
	}
	if len(name) > maxNameLen {
		return "", fmt.Errorf("secret name %.32q...: longer than %d bytes", name, maxNameLen)
	}
	if c := name[0]; c >= '0' && c <= '9' {
		return "", fmt.Errorf("secret name %q: starts with a digit, so it cannot be an environment variable", name)
	}
	b := make([]byte, len(name))
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z':
			b[i] = c - 'a' + 'A'
		case c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_':
			b[i] = c
		case c == '-' || c == '.':
			b[i] = '_'
		default:
			return "", fmt.Errorf("secret name %q: byte %q at offset %d cannot be part of an environment variable (use letters, digits, '_', '-' or '.')", name, c, i)
		}
	}
	env := string(b)
	if why := Reserved(env); why != "" {
		return "", fmt.Errorf("secret name %q: becomes %s, which is reserved (%s); rename the secret", name, env, why)
	}
	return env, nil
}

// reservedExact are variables a secret may never set: the dynamic loader,
// shells and the process's identity read them, Cordon sets the proxy
// variables itself, and the AWS credential variables are removed on purpose.
var reservedExact = map[string]string{
	"PATH": "process environment", "HOME": "process environment", "USER": "process environment",
	"LOGNAME": "process environment", "SHELL": "process environment", "PWD": "process environment",
	"TMPDIR": "process environment", "TERM": "process environment", "HOSTNAME": "process environment",
	"IFS": "shell", "ENV": "shell", "BASH_ENV": "shell", "SHELLOPTS": "shell", "PS4": "shell",
	"GCONV_PATH": "dynamic loader", "MALLOC_CHECK_": "dynamic loader",
	"HTTP_PROXY": "set by cordon", "HTTPS_PROXY": "set by cordon", "NO_PROXY": "set by cordon",
	"ALL_PROXY": "set by cordon", "FTP_PROXY": "set by cordon",
	"SPIFFE_ENDPOINT_SOCKET": "sidecar identity",
}

// reservedPrefixes are prefixes of reserved variables.
var reservedPrefixes = []struct{ prefix, why string }{
	{"LD_", "dynamic loader"},
	{"DYLD_", "dynamic loader"},
	{"CORDON_", "set by cordon"},
}

// Reserved reports why the environment variable env (compared
// case-insensitively) may not be set from a secret, or "" if it may.
func Reserved(env string) string {
	up := strings.ToUpper(env)
	if why, ok := reservedExact[up]; ok {
		return why
	}
	if IsTaskCredentialVar(up) {
		return "task AWS credentials are removed from the job"
	}
	for _, p := range reservedPrefixes {
		if strings.HasPrefix(up, p.prefix) {
			return p.why
		}
	}
	return ""
}

// taskCredentialExact and taskCredentialPrefixes name the variables through
// which a process finds the task's AWS credentials (or the ECS endpoints that
// hand them out). The job must never see them: it gets scoped credentials
// from Cordon instead (DESIGN.md step 6), and its secrets come injected.
var taskCredentialExact = map[string]bool{
	"AWS_ACCESS_KEY_ID":           true,
	"AWS_SECRET_ACCESS_KEY":       true,
	"AWS_SESSION_TOKEN":           true,
	"AWS_SECURITY_TOKEN":          true, // legacy spelling still read by boto
	"AWS_CREDENTIAL_EXPIRATION":   true,
	"AWS_WEB_IDENTITY_TOKEN_FILE": true,
	"AWS_ROLE_ARN":                true,
	"AWS_ROLE_SESSION_NAME":       true,
	"AWS_PROFILE":                 true,
	"AWS_DEFAULT_PROFILE":         true,
	"AWS_SHARED_CREDENTIALS_FILE": true,
	"AWS_CONFIG_FILE":             true, // can name a credential_process
}

var taskCredentialPrefixes = []string{
	"AWS_CONTAINER_CREDENTIALS_",        // _RELATIVE_URI, _FULL_URI
	"AWS_CONTAINER_AUTHORIZATION_TOKEN", // and _FILE
	// The task metadata endpoint reveals the task's ARN, cluster, image
	// digests and network; the job needs none of it and egress to
	// 169.254.170.2 is denied anyway.
	"ECS_CONTAINER_METADATA_URI", // and _V4
	"ECS_AGENT_URI",
}

// IsTaskCredentialVar reports whether env (upper case) names one of the
// task's AWS credential variables that are removed from the job's env.
func IsTaskCredentialVar(env string) bool {
	if taskCredentialExact[env] {
		return true
	}
	for _, p := range taskCredentialPrefixes {
		if strings.HasPrefix(env, p) {
			return true
		}
	}
	return false
}

// Var is one environment variable made from a secret.
type Var struct {
	Secret string // the declared secret name
	Env    string // the environment variable name
	Value  string
}

// ToEnv converts fetched secrets into environment variables, sorted by
// variable name. It refuses names that cannot become env vars and two
// secrets that would become the same variable (db-pass and db_pass), naming
// both secrets and no value.
func ToEnv(values map[string]string) ([]Var, error) {
	names := make([]string, 0, len(values))
	for n := range values {
		names = append(names, n)
	}
	sort.Strings(names)
	seen := make(map[string]string, len(names))
	vars := make([]Var, 0, len(names))
	for _, n := range names {
		env, err := EnvName(n)
		if err != nil {
			return nil, err
		}
		if other, dup := seen[env]; dup {
			return nil, fmt.Errorf("secret names %q and %q both become %s; rename one", other, n, env)
		}
		if strings.IndexByte(values[n], 0) >= 0 {
			return nil, fmt.Errorf("secret %q: value contains a NUL byte, which an environment variable cannot hold", n)
		}
		seen[env] = n
		vars = append(vars, Var{Secret: n, Env: env, Value: values[n]})
	}
	sort.Slice(vars, func(i, j int) bool { return vars[i].Env < vars[j].Env })
	return vars, nil
}

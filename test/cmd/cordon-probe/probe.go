package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

// DenyReasonHeader is where Cordon's egress proxy puts a denial's reason.
const DenyReasonHeader = "X-Cordon-Deny-Reason"

// Attempt is one thing the probe tries.
type Attempt struct {
	// Kind is http, direct, tcp, udp, metadata, secret, aws-env or
	// parent-env.
	Kind string
	// Target is the URL, HOST:PORT or variable name; empty for metadata
	// and aws-env.
	Target string
}

// Config configures a probe run.
type Config struct {
	// Attempts run in order. If empty, Run does nothing.
	Attempts []Attempt
	// Timeout bounds each attempt. If zero, 3s.
	Timeout time.Duration
	// CAFile adds PEM roots for https URLs. If empty, the system roots.
	CAFile string
	// Out receives one JSON line per result. Required.
	Out io.Writer
	// Getenv reads the job's environment. Required (os.Getenv in main).
	Getenv func(string) string
	// Proxy chooses the proxy for "http" attempts. If nil,
	// http.ProxyFromEnvironment (HTTP_PROXY, HTTPS_PROXY, NO_PROXY).
	Proxy func(*http.Request) (*url.URL, error)
	// MetadataTargets overrides the metadata addresses (tests point them
	// at loopback). If nil, metadataTargets.
	MetadataTargets []string
}

// Result is one JSON line. OK is from the job's point of view: true means
// the attempt got through (2xx answer, connection made, datagram answered,
// secret visible, AWS credential variables visible).
type Result struct {
	Probe  string `json:"probe"`
	Target string `json:"target,omitempty"`
	OK     bool   `json:"ok"`
	// Status is the HTTP status of the answer (or of a refused CONNECT).
	Status int `json:"status,omitempty"`
	// Reason is the proxy's X-Cordon-Deny-Reason, when it gave one.
	Reason string `json:"reason,omitempty"`
	Error  string `json:"error,omitempty"`
	// Form and Value: a secret printed in one encoding (probe "secret"),
	// or the names of visible variables (probe "aws-env").
	Form  string `json:"form,omitempty"`
	Value string `json:"value,omitempty"`
	Ms    int64  `json:"ms"`
}

// metadataTargets are the cloud metadata endpoints a job must never reach:
// EC2 IMDS, the ECS task credentials endpoint, and IMDS over IPv6.
var metadataTargets = []string{
	"http://169.254.169.254/latest/meta-data/iam/security-credentials/",
	"http://169.254.170.2/v2/credentials/",
	"http://[fd00:ec2::254]/latest/meta-data/",
}

// awsCredentialVars are the variables through which an AWS SDK finds
// credentials; the shim must remove every one from the job's environment.
var awsCredentialVars = []string{
	"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
	"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
	"AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
	"AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
}

// ParseAttempts reads KIND=TARGET arguments (KIND alone for metadata and
// aws-env).
func ParseAttempts(args []string) ([]Attempt, error) {
	if len(args) == 0 {
		return nil, errors.New("no attempts: pass at least one, e.g. http=http://example.test/ tcp=1.1.1.1:443")
	}
	out := make([]Attempt, 0, len(args))
	for _, a := range args {
		kind, target, hasTarget := strings.Cut(a, "=")
		switch kind {
		case "metadata", "aws-env", "parent-env":
			if hasTarget {
				return nil, fmt.Errorf("attempt %q: %s takes no target", a, kind)
			}
		case "http", "direct":
			u, err := url.Parse(target)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return nil, fmt.Errorf("attempt %q: want an absolute http(s) URL", a)
			}
		case "tcp", "udp":
			if _, _, err := net.SplitHostPort(target); err != nil {
				return nil, fmt.Errorf("attempt %q: want HOST:PORT ([ADDR]:PORT for IPv6): %v", a, err)
			}
		case "secret":
			if target == "" {
				return nil, fmt.Errorf("attempt %q: want secret=ENV_NAME", a)
			}
		default:
			return nil, fmt.Errorf("attempt %q: unknown kind %q (http, direct, tcp, udp, metadata, secret, aws-env, parent-env)", a, kind)
		}
		out = append(out, Attempt{Kind: kind, Target: target})
	}
	return out, nil
}

// Run performs every attempt in order and writes the results.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Timeout == 0 {
		cfg.Timeout = 3 * time.Second
	}
	if cfg.Proxy == nil {
		cfg.Proxy = http.ProxyFromEnvironment
	}
	if cfg.MetadataTargets == nil {
		cfg.MetadataTargets = metadataTargets
	}
	var roots *x509.CertPool
	if cfg.CAFile != "" {
		pemBytes, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return fmt.Errorf("read --ca: %w", err)
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pemBytes) {
			return fmt.Errorf("read --ca %s: no PEM certificate in it", cfg.CAFile)
		}
	}
	p := &prober{cfg: cfg, roots: roots}
	for _, a := range cfg.Attempts {
		var err error
		switch a.Kind {
		case "http":
			err = p.emit(p.get(ctx, "http", a.Target, cfg.Proxy))
		case "direct":
			err = p.emit(p.get(ctx, "direct", a.Target, nil))
		case "metadata":
			for _, t := range cfg.MetadataTargets {
				if err = p.emit(p.get(ctx, "metadata", t, nil)); err != nil {
					break
				}
			}
		case "tcp":
			err = p.emit(p.tcp(ctx, a.Target))
		case "udp":
			err = p.emit(p.udp(ctx, a.Target))
		case "secret":
			err = p.secret(a.Target)
		case "aws-env":
			err = p.emit(p.awsEnv())
		case "parent-env":
			err = p.emit(p.parentEnv())
		default:
			err = fmt.Errorf("unknown attempt kind %q", a.Kind)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

type prober struct {
	cfg   Config
	roots *x509.CertPool
}

func (p *prober) emit(r Result) error {
	line, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode result: %w", err)
	}
	if _, err := p.cfg.Out.Write(append(line, '\n')); err != nil {
		return fmt.Errorf("write result: %w", err)
	}
	return nil
}

func (p *prober) get(ctx context.Context, kind, target string, proxy func(*http.Request) (*url.URL, error)) Result {
	r := Result{Probe: kind, Target: target}
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	defer cancel()
	// A refused CONNECT surfaces as an error without the response; keep
	// its status and reason from the hook.
	var mu sync.Mutex
	tr := &http.Transport{
		Proxy:             proxy,
		TLSClientConfig:   &tls.Config{RootCAs: p.roots, MinVersion: tls.VersionTLS12},
		DisableKeepAlives: true,
		OnProxyConnectResponse: func(_ context.Context, _ *url.URL, _ *http.Request, resp *http.Response) error {
			mu.Lock()
			defer mu.Unlock()
			r.Status = resp.StatusCode
			r.Reason = resp.Header.Get(DenyReasonHeader)
			return nil
		},
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{
		Transport: tr,
		// Never follow redirects: a redirect is a second attempt the
		// test did not ask for.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	resp, err := client.Do(req)
	r.Ms = time.Since(start).Milliseconds()
	mu.Lock()
	defer mu.Unlock()
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	r.Status = resp.StatusCode
	if reason := resp.Header.Get(DenyReasonHeader); reason != "" {
		r.Reason = reason
	}
	r.OK = resp.StatusCode >= 200 && resp.StatusCode < 300
	return r
}

func (p *prober) tcp(ctx context.Context, target string) Result {
	r := Result{Probe: "tcp", Target: target}
	start := time.Now()
	d := net.Dialer{Timeout: p.cfg.Timeout}
	c, err := d.DialContext(ctx, "tcp", target)
	r.Ms = time.Since(start).Milliseconds()
	if err != nil {
		r.Error = err.Error()
		return r
	}
	c.Close()
	r.OK = true
	return r
}

// udp sends one datagram and counts any answer as success: a sandbox that
// lets a datagram out and back has a channel (DNS tunnelling is the classic).
func (p *prober) udp(ctx context.Context, target string) Result {
	r := Result{Probe: "udp", Target: target}
	start := time.Now()
	d := net.Dialer{Timeout: p.cfg.Timeout}
	c, err := d.DialContext(ctx, "udp", target)
	if err != nil {
		r.Error = err.Error()
		r.Ms = time.Since(start).Milliseconds()
		return r
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(p.cfg.Timeout))
	if _, err := c.Write([]byte("cordon-probe")); err != nil {
		r.Error = err.Error()
		r.Ms = time.Since(start).Milliseconds()
		return r
	}
	buf := make([]byte, 512)
	_, err = c.Read(buf)
	r.Ms = time.Since(start).Milliseconds()
	if err != nil {
		r.Error = err.Error()
		return r
	}
	r.OK = true
	return r
}

// secretForms are the encodings a job might use to smuggle a secret past a
// scrubber that only knows the raw value.
var secretForms = []struct {
	name   string
	encode func(string) string
}{
	{"raw", func(s string) string { return s }},
	{"base64", func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }},
	{"base64url", func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }},
	{"hex", func(s string) string { return hex.EncodeToString([]byte(s)) }},
	{"url", url.QueryEscape},
}

// secret prints the variable's value in every form, then once more raw but
// split across two writes 20ms apart, which a scrubber that looks at one
// write at a time would miss.
func (p *prober) secret(name string) error {
	v := p.cfg.Getenv(name)
	if v == "" {
		return p.emit(Result{Probe: "secret", Target: name, Error: "not set"})
	}
	for _, f := range secretForms {
		if err := p.emit(Result{Probe: "secret", Target: name, OK: true, Form: f.name, Value: f.encode(v)}); err != nil {
			return err
		}
	}
	line, err := json.Marshal(Result{Probe: "secret", Target: name, OK: true, Form: "split", Value: v})
	if err != nil {
		return fmt.Errorf("encode result: %w", err)
	}
	line = append(line, '\n')
	cut := strings.Index(string(line), `"value":"`) + len(`"value":"`) + len(v)/2
	if _, err := p.cfg.Out.Write(line[:cut]); err != nil {
		return fmt.Errorf("write result: %w", err)
	}
	time.Sleep(20 * time.Millisecond)
	if _, err := p.cfg.Out.Write(line[cut:]); err != nil {
		return fmt.Errorf("write result: %w", err)
	}
	return nil
}

// awsEnv reports the names (never the values) of visible AWS credential
// variables.
func (p *prober) awsEnv() Result {
	var seen []string
	for _, n := range awsCredentialVars {
		if p.cfg.Getenv(n) != "" {
			seen = append(seen, n)
		}
	}
	return Result{Probe: "aws-env", OK: len(seen) > 0, Value: strings.Join(seen, ",")}
}

// parentEnv reads the initial environment of the job's parent (the shim)
// from /proc: a process's /proc/PID/environ keeps the environment it was
// started with even after it unsets variables, and a job running as the
// same uid can read it unless the parent made itself non-dumpable. It
// reports the names (never the values) of AWS credential variables found.
func (p *prober) parentEnv() Result {
	r := Result{Probe: "parent-env", Target: fmt.Sprintf("/proc/%d/environ", os.Getppid())}
	b, err := os.ReadFile(r.Target)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	var seen []string
	for _, kv := range strings.Split(string(b), "\x00") {
		name, _, _ := strings.Cut(kv, "=")
		if slices.Contains(awsCredentialVars, name) {
			seen = append(seen, name)
		}
	}
	r.OK = len(seen) > 0
	r.Value = strings.Join(seen, ",")
	return r
}

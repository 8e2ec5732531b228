package scrub

import (
	"errors"
	"fmt"
	"io"
	"strings"
)

// MinSecretLen is the shortest secret value the scrubber redacts. Shorter
// values are refused by New (see ShortSecretError) unless
// Config.IgnoreShortSecrets is set.
const MinSecretLen = 6

// maxSecretLen bounds a secret value; longer values are refused because
// every form of them becomes automaton state and hold-back.
const maxSecretLen = 64 << 10

// Marker texts.
const (
	// RuleMarker replaces the secret part of a token or key-context rule
	// match, as seeds/002 shows: "sk_live_***REDACTED***".
	RuleMarker = "***REDACTED***"
	// EmailMarker replaces the masked part of an email's local part.
	EmailMarker = "***"
)

// Secret is one injected secret.
type Secret struct {
	// Name is the secret's name (for example MONAD_RPC_KEY). It is not
	// secret: it appears in redaction markers and errors. It must be 1–128
	// bytes of [A-Za-z0-9_.-/].
	Name string
	// Value is the secret value. It never appears in an error or marker.
	Value string
}

// Config configures a Scrubber.
type Config struct {
	// Secrets are redacted with all their encodings. If empty, only the
	// rules and email masking apply.
	Secrets []Secret
	// DisableRules turns off the token and key-context rules (AWS, GitHub,
	// Stripe, Slack, JWT, PEM, password=, token:, Authorization: ...). If
	// false (the zero value), they run.
	DisableRules bool
	// DisableEmailMask turns off email masking. If false (the zero value),
	// emails are masked.
	DisableEmailMask bool
	// Marker, if set, replaces every secret-value match instead of the
	// default "[REDACTED:NAME]". It must be printable ASCII without a
	// secret form in it. If empty, the default is used.
	Marker string
	// IgnoreShortSecrets accepts secrets shorter than MinSecretLen and does
	// not redact them (Scrubber.Unscrubbed lists their names). If false (the
	// zero value), New refuses them with a *ShortSecretError.
	IgnoreShortSecrets bool
}

// ShortSecretError reports a secret too short to redact without destroying
// ordinary output (a value like "1" or "abc" occurs everywhere).
type ShortSecretError struct {
	Name string // the secret's name; never its value
	Len  int
}

func (e *ShortSecretError) Error() string {
	return fmt.Sprintf("secret %q is %d bytes, shorter than the %d bytes the output scrubber can redact reliably: use a longer value, or accept that it is not scrubbed (IgnoreShortSecrets)", e.Name, e.Len, MinSecretLen)
}

// ErrClosed is returned by Write after Close.
var ErrClosed = errors.New("scrub: write after close")

// Scrubber holds the compiled automaton. It is immutable after New and safe
// for concurrent NewWriter calls.
type Scrubber struct {
	ac          *automaton
	markers     [][]byte // per secret index
	triggers    []trigger
	emails      bool
	rules       bool
	unscrubbed  []string
	maxHoldHint int
}

// New compiles cfg. It fails if a secret has an invalid name, is too short
// (see MinSecretLen) or too long, or if a marker would contain a secret.
func New(cfg Config) (*Scrubber, error) {
	s := &Scrubber{emails: !cfg.DisableEmailMask, rules: !cfg.DisableRules}
	if cfg.Marker != "" {
		for i := 0; i < len(cfg.Marker); i++ {
			if c := cfg.Marker[i]; c < 0x20 || c > 0x7e {
				return nil, fmt.Errorf("scrub: marker has a non-printable byte at offset %d: use printable ASCII", i)
			}
		}
	}
	var pats [][]byte
	var ids []int32
	for _, sec := range cfg.Secrets {
		if err := checkName(sec.Name); err != nil {
			return nil, err
		}
		if len(sec.Value) < MinSecretLen {
			if cfg.IgnoreShortSecrets {
				s.unscrubbed = append(s.unscrubbed, sec.Name)
				continue
			}
			return nil, &ShortSecretError{Name: sec.Name, Len: len(sec.Value)}
		}
		if len(sec.Value) > maxSecretLen {
			return nil, fmt.Errorf("scrub: secret %q is %d bytes, more than the %d the scrubber accepts", sec.Name, len(sec.Value), maxSecretLen)
		}
		idx := int32(len(s.markers))
		m := cfg.Marker
		if m == "" {
			m = "[REDACTED:" + sec.Name + "]"
		}
		s.markers = append(s.markers, []byte(m))
		for _, f := range secretForms(sec.Value) {
			pats = append(pats, []byte(f))
			ids = append(ids, idx)
		}
	}
	if s.rules || s.emails {
		s.triggers = buildTriggers(s.rules, s.emails)
		for i, t := range s.triggers {
			pats = append(pats, []byte(t.text))
			ids = append(ids, -int32(i)-1)
		}
	}
	s.ac = buildAutomaton(pats, ids)

	// A marker must not reintroduce a secret: scan every marker text.
	for _, m := range append(append([][]byte{}, s.markers...), []byte(RuleMarker), []byte(EmailMarker)) {
		if id, ok := s.ac.findSecret(m); ok {
			return nil, fmt.Errorf("scrub: the value of secret %q occurs in the redaction marker (%d bytes): set Config.Marker to a text that does not contain it", cfg.Secrets[s.secretIndex(id, cfg)].Name, len(m))
		}
	}
	return s, nil
}

// secretIndex maps a marker index back to cfg.Secrets (short secrets that
// were ignored are skipped in marker indexes).
func (s *Scrubber) secretIndex(id int32, cfg Config) int {
	n := int32(-1)
	for i, sec := range cfg.Secrets {
		if len(sec.Value) >= MinSecretLen {
			n++
		}
		if n == id {
			return i
		}
	}
	return 0
}

// findSecret reports whether p contains a secret form.
func (a *automaton) findSecret(p []byte) (int32, bool) {
	ref := uint32(root)
	for _, b := range p {
		ref = a.step(ref, b)
		for n := int32(a.id(ref)); n >= 0; n = a.dictLink[n] {
			for _, o := range a.outs[a.outStart[n]:a.outStart[n+1]] {
				if o.id >= 0 {
					return o.id, true
				}
			}
		}
	}
	return 0, false
}

func checkName(name string) error {
	if name == "" || len(name) > 128 {
		return fmt.Errorf("scrub: secret name %q must be 1 to 128 bytes", name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("_.-/", c) >= 0
		if !ok {
			return fmt.Errorf("scrub: secret name %q has byte %q at offset %d: names may use only letters, digits and _.-/", name, c, i)
		}
	}
	return nil
}

// Unscrubbed returns the names of secrets accepted but not redacted because
// they are shorter than MinSecretLen (only with Config.IgnoreShortSecrets).
func (s *Scrubber) Unscrubbed() []string {
	return append([]string(nil), s.unscrubbed...)
}

// NewWriter returns a Writer that scrubs what is written to it and writes
// the result to dst. Use one Writer per stream.
func (s *Scrubber) NewWriter(dst io.Writer) *Writer {
	return &Writer{s: s, dst: dst}
}

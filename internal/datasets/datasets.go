// Package datasets is the dataset declaration a job's task payload carries:
// the S3 prefixes it reads (inputs) and writes (outputs), each optionally
// marked as PII. The dispatcher validates a declaration before it mints the
// run's credentials (dispatcher/credentials turns it into an STS session
// policy), and the sidecar may decode the same type from the payload.
//
// Decoding is strict (seeds/002 "Job Payload Validation": unknown fields are
// refused, 64 KB at most), and a location is accepted only in one narrow,
// canonical shape so that nothing a job writes can reach an IAM policy as a
// wildcard, a policy variable or a path trick:
//
//   - s3://bucket/prefix/ or arn:aws:s3:::bucket/prefix/ (the ARN is
//     normalised to the s3:// form; other partitions, a region or an account
//     are refused because S3 bucket ARNs never carry them);
//   - the bucket follows the AWS general-purpose bucket naming rules;
//   - the prefix is one or more segments of [A-Za-z0-9._=-], each ending in
//     "/" (so "acme/blocks/" can never also match "acme/blocks-private/"),
//     and no segment is "." or "..";
//   - no wildcards, no "$" (IAM expands ${aws:...} policy variables), no
//     quotes, spaces, control characters or non-ASCII.
//
// Org confinement (Confinement) then limits an org's datasets to its own
// roots, e.g. s3://trace-data/{org}/.
//
// It is not an authorization decision about PII: that needs a grant, which
// dispatcher/credentials checks.
package datasets

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
)

// Limits on a declaration.
const (
	// MaxPayloadBytes is the largest declaration Decode reads (seeds/002:
	// "max 64 KB payload").
	MaxPayloadBytes = 64 << 10
	// MaxInputs and MaxOutputs bound how many datasets one job declares.
	// An STS session policy is at most 2048 characters, so far fewer fit in
	// practice; the policy generator reports that separately.
	MaxInputs  = 32
	MaxOutputs = 16
	// MaxLocationLen bounds one location string.
	MaxLocationLen = 512
)

// Declaration is a job's declared datasets.
type Declaration struct {
	// Inputs are read: s3:GetObject and s3:ListBucket under each prefix.
	// If empty, the job reads nothing.
	Inputs []Dataset `json:"inputs"`
	// Outputs are written: s3:PutObject under each prefix. If empty, the
	// job writes nothing.
	Outputs []Dataset `json:"outputs"`
}

// Dataset is one declared S3 prefix.
type Dataset struct {
	// Location is "s3://bucket/prefix/" or "arn:aws:s3:::bucket/prefix/".
	// Required.
	Location string `json:"location"`
	// PII marks a dataset holding personal data; using it needs a PII grant.
	// If false, the dataset is not PII.
	PII bool `json:"pii,omitempty"`
}

// Location is a parsed, canonical dataset location.
type Location struct {
	Bucket string // a valid bucket name
	Prefix string // one or more segments, each ending in "/"; never empty
}

// String is the canonical s3:// form.
func (l Location) String() string { return "s3://" + l.Bucket + "/" + l.Prefix }

// Contains reports whether every key under o is also under l.
func (l Location) Contains(o Location) bool {
	return l.Bucket == o.Bucket && strings.HasPrefix(o.Prefix, l.Prefix)
}

// Error is a validation failure. Field names the JSON field at fault, e.g.
// "inputs[2].location".
type Error struct {
	Field string // empty when the whole declaration is at fault
	Msg   string
	Err   error // a sentinel such as ErrNotConfined, or nil
}

func (e *Error) Error() string {
	if e.Field == "" {
		return "dataset declaration: " + e.Msg
	}
	return "dataset declaration: " + e.Field + ": " + e.Msg
}

// ErrNotConfined is wrapped by the Error returned when a location lies
// outside the org's roots.
var ErrNotConfined = errors.New("location outside the org's dataset roots")

// Decode strictly decodes and syntax-checks one JSON declaration: unknown
// or duplicate fields, trailing data, more than MaxPayloadBytes and any
// invalid location are errors. It does not apply org confinement; call
// Validate for that.
func Decode(r io.Reader) (Declaration, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxPayloadBytes+1))
	if err != nil {
		return Declaration{}, fmt.Errorf("dataset declaration: read: %w", err)
	}
	if len(data) > MaxPayloadBytes {
		return Declaration{}, &Error{Msg: fmt.Sprintf("larger than %d bytes; declare fewer datasets", MaxPayloadBytes)}
	}
	if err := checkDuplicateKeys(data); err != nil {
		return Declaration{}, err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var d Declaration
	if err := dec.Decode(&d); err != nil {
		return Declaration{}, &Error{Msg: "invalid JSON: " + err.Error()}
	}
	if _, err := dec.Token(); err != io.EOF {
		return Declaration{}, &Error{Msg: "trailing data after the declaration object"}
	}
	if err := d.Check(); err != nil {
		return Declaration{}, err
	}
	return d, nil
}

// checkDuplicateKeys refuses an object with the same key twice: encoding/json
// would silently keep the last, so a reviewer and the decoder could read
// different declarations.
func checkDuplicateKeys(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	type frame struct {
		obj     bool
		keys    map[string]bool
		wantKey bool
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return &Error{Msg: "invalid JSON: " + err.Error()}
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		switch t := tok.(type) {
		case json.Delim:
			switch t {
			case '{', '[':
				if top != nil && top.obj {
					top.wantKey = true
				}
				stack = append(stack, &frame{obj: t == '{', keys: map[string]bool{}, wantKey: true})
			case '}', ']':
				stack = stack[:len(stack)-1]
			}
		default:
			if top != nil && top.obj {
				if top.wantKey {
					k, _ := t.(string)
					if top.keys[k] {
						return &Error{Field: k, Msg: "field appears twice; give it once"}
					}
					top.keys[k] = true
					top.wantKey = false
				} else {
					top.wantKey = true
				}
			}
		}
	}
}

// Check validates counts and the syntax of every location, without org
// confinement. The zero Declaration is valid (a job with no data access).
func (d Declaration) Check() error {
	if len(d.Inputs) > MaxInputs {
		return &Error{Field: "inputs", Msg: fmt.Sprintf("%d datasets, at most %d allowed", len(d.Inputs), MaxInputs)}
	}
	if len(d.Outputs) > MaxOutputs {
		return &Error{Field: "outputs", Msg: fmt.Sprintf("%d datasets, at most %d allowed", len(d.Outputs), MaxOutputs)}
	}
	for _, l := range []struct {
		name string
		ds   []Dataset
	}{{"inputs", d.Inputs}, {"outputs", d.Outputs}} {
		seen := map[Location]bool{}
		for i, ds := range l.ds {
			field := fmt.Sprintf("%s[%d].location", l.name, i)
			loc, err := ParseLocation(ds.Location)
			if err != nil {
				return &Error{Field: field, Msg: err.Error()}
			}
			if seen[loc] {
				return &Error{Field: field, Msg: fmt.Sprintf("%s is declared twice in %s", loc, l.name)}
			}
			seen[loc] = true
		}
	}
	return nil
}

// Validate is Check plus org confinement: every location must lie under one
// of c's roots for org.
func (d Declaration) Validate(org string, c Confinement) error {
	if err := d.Check(); err != nil {
		return err
	}
	roots, err := c.Roots(org)
	if err != nil {
		return err
	}
	for _, l := range []struct {
		name string
		ds   []Dataset
	}{{"inputs", d.Inputs}, {"outputs", d.Outputs}} {
		for i, ds := range l.ds {
			loc, _ := ParseLocation(ds.Location) // checked above
			if !within(loc, roots) {
				return &Error{Field: fmt.Sprintf("%s[%d].location", l.name, i),
					Msg: fmt.Sprintf("%s: %v of org %q (%s); declare a dataset under one of them", loc, ErrNotConfined, org, rootList(roots)),
					Err: ErrNotConfined}
			}
		}
	}
	return nil
}

// Unwrap returns the sentinel, if any.
func (e *Error) Unwrap() error { return e.Err }

func within(l Location, roots []Location) bool {
	for _, r := range roots {
		if r.Contains(l) {
			return true
		}
	}
	return false
}

func rootList(roots []Location) string {
	s := make([]string, len(roots))
	for i, r := range roots {
		s[i] = r.String()
	}
	return strings.Join(s, ", ")
}

// Confinement is where each org's datasets may live.
type Confinement struct {
	// RootTemplates are locations in which "{org}" is replaced by the org
	// slug, e.g. "s3://trace-data/{org}/". A template without "{org}" is
	// shared by every org and refused by Validate: an org's root must be
	// its own. If empty, every declaration with a dataset is refused.
	RootTemplates []string `json:"root_templates"`
}

// orgRE is the org slug rule shared with internal/allowlist.
var orgRE = regexp.MustCompile(`^[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?$`)

// Check validates the templates themselves (with a sample org).
func (c Confinement) Check() error {
	_, err := c.Roots("org")
	return err
}

// Roots returns org's roots.
func (c Confinement) Roots(org string) ([]Location, error) {
	if !orgRE.MatchString(org) {
		return nil, &Error{Field: "org", Msg: fmt.Sprintf("%q is not an org slug (1 to 63 of a-z, 0-9, '-', '_')", org)}
	}
	roots := make([]Location, 0, len(c.RootTemplates))
	for i, t := range c.RootTemplates {
		field := fmt.Sprintf("root_templates[%d]", i)
		if !strings.Contains(t, "{org}") {
			return nil, &Error{Field: field, Msg: fmt.Sprintf("%q does not contain {org}; every org needs its own root", t)}
		}
		loc, err := ParseLocation(strings.ReplaceAll(t, "{org}", org))
		if err != nil {
			return nil, &Error{Field: field, Msg: err.Error()}
		}
		roots = append(roots, loc)
	}
	return roots, nil
}

// Parsed checks the declaration (see Check) and returns its datasets with
// their locations parsed, in declaration order.
func (d Declaration) Parsed() (inputs, outputs []ParsedDataset, err error) {
	if err := d.Check(); err != nil {
		return nil, nil, err
	}
	conv := func(ds []Dataset) []ParsedDataset {
		out := make([]ParsedDataset, len(ds))
		for i, x := range ds {
			loc, _ := ParseLocation(x.Location)
			out[i] = ParsedDataset{Location: loc, PII: x.PII}
		}
		return out
	}
	return conv(d.Inputs), conv(d.Outputs), nil
}

// ParsedDataset is a Dataset with its location parsed.
type ParsedDataset struct {
	Location Location
	PII      bool
}

const arnPrefix = "arn:"

// ParseLocation parses "s3://bucket/prefix/" or "arn:aws:s3:::bucket/prefix/"
// into its canonical form. The rules are in the package documentation.
func ParseLocation(s string) (Location, error) {
	if s == "" {
		return Location{}, errors.New("empty location; give s3://bucket/prefix/")
	}
	if len(s) > MaxLocationLen {
		return Location{}, fmt.Errorf("location is %d bytes, at most %d allowed", len(s), MaxLocationLen)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f {
			return Location{}, fmt.Errorf("location has a control or non-ASCII byte at offset %d", i)
		}
	}
	var rest string
	switch {
	case strings.HasPrefix(s, "s3://"):
		rest = s[len("s3://"):]
	case strings.HasPrefix(s, arnPrefix):
		r, ok := strings.CutPrefix(s, "arn:aws:s3:::")
		if !ok {
			return Location{}, fmt.Errorf("%q is not an S3 object ARN of the aws partition; give arn:aws:s3:::bucket/prefix/ (no region, no account) or s3://bucket/prefix/", s)
		}
		rest = r
	default:
		return Location{}, fmt.Errorf("%q is neither s3://bucket/prefix/ nor arn:aws:s3:::bucket/prefix/", s)
	}
	bucket, prefix, ok := strings.Cut(rest, "/")
	if err := checkBucket(bucket); err != nil {
		return Location{}, fmt.Errorf("bucket %q: %w", bucket, err)
	}
	if !ok || prefix == "" {
		return Location{}, fmt.Errorf("%q names a whole bucket; declare a prefix such as s3://%s/<org>/<dataset>/", s, bucket)
	}
	if err := checkPrefix(prefix); err != nil {
		return Location{}, fmt.Errorf("prefix %q: %w", prefix, err)
	}
	return Location{Bucket: bucket, Prefix: prefix}, nil
}

// checkBucket applies the general-purpose bucket naming rules:
// https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html
func checkBucket(b string) error {
	if len(b) < 3 || len(b) > 63 {
		return errors.New("must be 3 to 63 characters long")
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-') {
			return fmt.Errorf("character %q at offset %d: use lowercase letters, digits, '.' and '-' only", c, i)
		}
	}
	if !isAlnum(b[0]) || !isAlnum(b[len(b)-1]) {
		return errors.New("must begin and end with a letter or digit")
	}
	if strings.Contains(b, "..") || strings.Contains(b, ".-") || strings.Contains(b, "-.") {
		return errors.New("must not contain two adjacent periods or a period next to a hyphen")
	}
	if isIPv4(b) {
		return errors.New("must not be formatted as an IP address")
	}
	for _, p := range []string{"xn--", "sthree-", "amzn-s3-demo-"} {
		if strings.HasPrefix(b, p) {
			return fmt.Errorf("must not start with the reserved prefix %q", p)
		}
	}
	for _, sfx := range []string{"-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"} {
		if strings.HasSuffix(b, sfx) {
			return fmt.Errorf("must not end with the reserved suffix %q", sfx)
		}
	}
	return nil
}

func isAlnum(c byte) bool { return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' }

func isIPv4(b string) bool {
	parts := strings.Split(b, ".")
	if len(parts) != 4 {
		return false
	}
	for _, p := range parts {
		if p == "" || len(p) > 3 {
			return false
		}
		for i := 0; i < len(p); i++ {
			if p[i] < '0' || p[i] > '9' {
				return false
			}
		}
	}
	return true
}

// checkPrefix enforces the prefix rule in the package documentation.
func checkPrefix(p string) error {
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-', c == '=', c == '/':
		case c == '*' || c == '?':
			return fmt.Errorf("wildcard %q at offset %d: datasets are literal prefixes", c, i)
		case c == '$':
			return fmt.Errorf("'$' at offset %d: not allowed (IAM would expand ${...} policy variables)", i)
		default:
			return fmt.Errorf("character %q at offset %d: use letters, digits, '.', '_', '-', '=' and '/' only", c, i)
		}
	}
	if !strings.HasSuffix(p, "/") {
		return errors.New(`must end with "/" so that it cannot also match sibling prefixes; add a trailing slash`)
	}
	for _, seg := range strings.Split(strings.TrimSuffix(p, "/"), "/") {
		switch seg {
		case "":
			return errors.New(`empty segment ("//" or a leading "/")`)
		case ".", "..":
			return fmt.Errorf("segment %q: relative path segments are not allowed", seg)
		}
	}
	return nil
}

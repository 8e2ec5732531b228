package ingest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"strings"
	"time"
	"unicode"

	"github.com/cordon-dev/cordon/dispatcher/auditstore"
	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/cordon-dev/cordon/internal/usage"
)

// Limits bound what one request may carry.
type Limits struct {
	// MaxBodyBytes is the largest request body. If zero, 4 MiB.
	MaxBodyBytes int64
	// MaxItems is the most events or reports in one request. If zero, 10,000.
	MaxItems int
	// MaxEventAge is how old an event or report may be. If zero, 30 days.
	// Older events would land in months whose partitions may be gone.
	MaxEventAge time.Duration
	// MaxClockSkew is how far in the future a timestamp may be. If zero,
	// 5 minutes.
	MaxClockSkew time.Duration
	// MaxMetadataBytes is the largest encoded metadata of one event. If
	// zero, 16 KiB.
	MaxMetadataBytes int
}

func (l Limits) withDefaults() Limits {
	if l.MaxBodyBytes == 0 {
		l.MaxBodyBytes = 4 << 20
	}
	if l.MaxItems == 0 {
		l.MaxItems = 10_000
	}
	if l.MaxEventAge == 0 {
		l.MaxEventAge = 30 * 24 * time.Hour
	}
	if l.MaxClockSkew == 0 {
		l.MaxClockSkew = 5 * time.Minute
	}
	if l.MaxMetadataBytes == 0 {
		l.MaxMetadataBytes = 16 << 10
	}
	return l
}

// InvalidError is a request the dispatcher will never accept: the client
// must not retry it. Index is the offending item, or -1.
type InvalidError struct {
	Index  int
	Field  string
	Reason string
}

func (e *InvalidError) Error() string {
	if e.Index < 0 {
		return e.Reason
	}
	return fmt.Sprintf("item %d: %s: %s", e.Index, e.Field, e.Reason)
}

type usageBody struct {
	Reports []usage.Report `json:"reports"`
}

// TooLargeError is a body over Limits.MaxBodyBytes.
type TooLargeError struct{ Limit int64 }

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("request body larger than %d bytes: split the batch", e.Limit)
}

// decodeStrict reads at most limit bytes and decodes exactly one JSON value
// into v, refusing unknown fields and trailing data. Only usage bodies use
// it: events bodies are decoded by hand (decode.go).
func decodeStrict(r io.Reader, limit int64, v any) error {
	body, err := readBody(r, limit)
	if err != nil {
		return err
	}
	defer putBody(body) // encoding/json copies what it decodes out of it
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return &InvalidError{Index: -1, Reason: "malformed JSON body: " + err.Error()}
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return &InvalidError{Index: -1, Reason: "malformed JSON body: data after the top-level object"}
	}
	return nil
}

// DecodeEvents reads an events request body, validates every event and
// redacts secret-looking metadata. It returns the events with their
// metadata as the exact JSON to store, and the number of redactions.
func DecodeEvents(r io.Reader, lim Limits, now time.Time) ([]auditstore.Record, int, error) {
	lim = lim.withDefaults()
	body, err := readBody(r, lim.MaxBodyBytes)
	if err != nil {
		return nil, 0, err
	}
	defer putBody(body) // nothing returned refers to it: see prepareMetadata
	recs, err := decodeEventsBody(body.Bytes(), lim.MaxItems)
	if err != nil {
		return nil, 0, err
	}
	if len(recs) == 0 {
		return nil, 0, &InvalidError{Index: -1, Reason: `"events" is missing or empty`}
	}
	redactions := 0
	// The stored metadata of every event, compacted, in one allocation:
	// it is never larger than the body.
	arena := make([]byte, 0, body.Len())
	for i := range recs {
		rec := &recs[i]
		if err := validateEvent(&rec.Event, lim, now); err != nil {
			err.Index = i
			return nil, 0, err
		}
		var md []byte
		var n int
		var err *InvalidError
		md, arena, n, err = prepareMetadata(arena, rec.RawMetadata, lim)
		if err != nil {
			err.Index = i
			return nil, 0, err
		}
		rec.RawMetadata = md
		redactions += n
		rec.Event.Actor.UserAgent, n = RedactString(rec.Event.Actor.UserAgent)
		redactions += n
	}
	return recs, redactions, nil
}

// prepareMetadata checks an event's metadata raw (valid JSON: the decoder
// checked it) and returns it as it is to be stored: a JSON object, at most
// MaxMetadataBytes, nested at most 8 deep, compacted, with secret-looking
// values redacted. Most metadata holds nothing that could be redacted: when
// raw has no escape sequence and none of the literals every redaction needs
// (mayHoldSecret), it is compacted into arena (returned grown) without being
// decoded; otherwise it is decoded, redacted and re-encoded. The result
// never aliases raw.
func prepareMetadata(arena []byte, raw []byte, lim Limits) (md, grown []byte, redactions int, err *InvalidError) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, arena, 0, nil
	}
	if raw[0] != '{' {
		return nil, arena, 0, invalid("metadata", "must be a JSON object")
	}
	if len(raw) > lim.MaxMetadataBytes {
		return nil, arena, 0, invalid("metadata", "%d bytes, the limit is %d", len(raw), lim.MaxMetadataBytes)
	}
	// Invalid UTF-8 also takes the slow path (mayHoldSecret answers yes
	// to every non-ASCII byte): decoding replaces it, and Postgres would
	// refuse it.
	if bytes.IndexByte(raw, '\\') < 0 && !mayHoldSecret(raw) {
		start := len(arena)
		var depth int
		arena, depth = appendCompact(arena, raw)
		if depth > 8 {
			return nil, arena[:start], 0, invalid("metadata", "nested deeper than 8 levels")
		}
		return arena[start:len(arena):len(arena)], arena, 0, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return nil, arena, 0, invalid("metadata", "is not a valid JSON object")
	}
	if depth(m, 0) > 8 {
		return nil, arena, 0, invalid("metadata", "nested deeper than 8 levels")
	}
	m, n := RedactMetadata(m)
	b, merr := json.Marshal(m)
	if merr != nil {
		return nil, arena, 0, invalid("metadata", "cannot be encoded: %v", merr)
	}
	if len(b) > lim.MaxMetadataBytes {
		return nil, arena, 0, invalid("metadata", "%d bytes once redacted, the limit is %d", len(b), lim.MaxMetadataBytes)
	}
	return b, arena, n, nil
}

// appendCompact appends valid JSON text b, which holds no escape sequence
// (so no string holds a quote), to dst without the whitespace between
// tokens, and returns its nesting depth.
func appendCompact(dst, b []byte) ([]byte, int) {
	d, max, inString := 0, 0, false
	for _, c := range b {
		switch {
		case c == '"':
			inString = !inString
		case inString:
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			continue
		case c == '{' || c == '[':
			d++
			if d > max {
				max = d
			}
		case c == '}' || c == ']':
			d--
		}
		dst = append(dst, c)
	}
	return dst, max
}

// DecodeUsage reads a usage request body and validates every report.
func DecodeUsage(r io.Reader, lim Limits, now time.Time) ([]usage.Report, error) {
	lim = lim.withDefaults()
	var body usageBody
	if err := decodeStrict(r, lim.MaxBodyBytes, &body); err != nil {
		return nil, err
	}
	if len(body.Reports) == 0 {
		return nil, &InvalidError{Index: -1, Reason: `"reports" is missing or empty`}
	}
	if len(body.Reports) > lim.MaxItems {
		return nil, &InvalidError{Index: -1, Reason: fmt.Sprintf("%d reports in one request, the limit is %d: split the batch", len(body.Reports), lim.MaxItems)}
	}
	for i := range body.Reports {
		if err := validateReport(&body.Reports[i], lim, now); err != nil {
			err.Index = i
			return nil, err
		}
	}
	return body.Reports, nil
}

// The checks below run for every item of every request, so they are
// written out by hand; validate_test.go holds the equivalent regexps and
// checks that both agree.

// isPrefixedUUID: prefix and a lowercase UUID, 8-4-4-4-12 hex digits.
func isPrefixedUUID(s, prefix string) bool {
	if len(s) != len(prefix)+36 || s[:len(prefix)] != prefix {
		return false
	}
	for i, c := range []byte(s[len(prefix):]) {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				return false
			}
		}
	}
	return true
}

// isUpperName: ^[A-Z][A-Z0-9_]{0,63}$
func isUpperName(s string) bool {
	if len(s) == 0 || len(s) > 64 || s[0] < 'A' || s[0] > 'Z' {
		return false
	}
	for _, c := range []byte(s) {
		if !('A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// isSlug: ^[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?$ (the allowlist's org and
// job names).
func isSlug(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	alnum := func(c byte) bool { return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' }
	if !alnum(s[0]) || !alnum(s[len(s)-1]) {
		return false
	}
	for _, c := range []byte(s) {
		if !alnum(c) && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

// isRunID: ^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$
func isRunID(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i, c := range []byte(s) {
		ok := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
		if !ok && (i == 0 || (c != '.' && c != '_' && c != ':' && c != '-')) {
			return false
		}
	}
	return true
}

func invalid(field, format string, args ...any) *InvalidError {
	return &InvalidError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// text checks a free-text field: bounded, and no control characters (which
// Postgres text refuses (NUL) or which forge log lines).
func text(field, s string, max int, required bool) *InvalidError {
	if s == "" {
		if required {
			return invalid(field, "is required")
		}
		return nil
	}
	if len(s) > max {
		return invalid(field, "%d bytes, the limit is %d", len(s), max)
	}
	if strings.IndexFunc(s, unicode.IsControl) >= 0 {
		return invalid(field, "contains control characters")
	}
	return nil
}

func timestamp(field string, t time.Time, lim Limits, now time.Time) *InvalidError {
	switch {
	case t.IsZero():
		return invalid(field, "is required")
	case t.Before(now.Add(-lim.MaxEventAge)):
		return invalid(field, "%s is more than %s in the past", t.UTC().Format(time.RFC3339), lim.MaxEventAge)
	case t.After(now.Add(lim.MaxClockSkew)):
		return invalid(field, "%s is more than %s in the future: check the sender's clock", t.UTC().Format(time.RFC3339), lim.MaxClockSkew)
	}
	return nil
}

func validateEvent(ev *audit.Event, lim Limits, now time.Time) *InvalidError {
	if !isPrefixedUUID(ev.EventID, "evt_") {
		return invalid("event_id", `must be "evt_" and a lowercase UUID`)
	}
	if err := timestamp("timestamp", ev.Timestamp, lim, now); err != nil {
		return err
	}
	if !isUpperName(ev.EventType) {
		return invalid("event_type", "must be UPPER_SNAKE_CASE, at most 64 characters")
	}
	switch ev.Actor.Type {
	case audit.ActorUser, audit.ActorJob, audit.ActorService:
	default:
		return invalid("actor.type", "must be USER, JOB or SERVICE")
	}
	if err := text("actor.id", ev.Actor.ID, 256, true); err != nil {
		return err
	}
	if ev.Actor.IPAddress != "" {
		if _, err := netip.ParseAddr(ev.Actor.IPAddress); err != nil {
			return invalid("actor.ip_address", "is not an IP address")
		}
	}
	if err := text("actor.user_agent", ev.Actor.UserAgent, 512, false); err != nil {
		return err
	}
	if !isUpperName(ev.Resource.Type) {
		return invalid("resource.type", "must be UPPER_SNAKE_CASE, at most 64 characters")
	}
	if err := text("resource.id", ev.Resource.ID, 512, true); err != nil {
		return err
	}
	if !isSlug(ev.Resource.TenantID) {
		return invalid("resource.tenant_id", "must be an org slug")
	}
	if !isUpperName(ev.Action) {
		return invalid("action", "must be UPPER_SNAKE_CASE, at most 64 characters")
	}
	switch ev.Result {
	case audit.ResultSuccess, audit.ResultFailure, audit.ResultDenied, audit.ResultWouldDeny:
	default:
		return invalid("result", "must be SUCCESS, FAILURE, DENIED or WOULD_DENY")
	}
	if err := text("request_id", ev.RequestID, 128, false); err != nil {
		return err
	}
	return nil
}

func depth(v any, d int) int {
	if d > 8 {
		return d
	}
	max := d
	switch x := v.(type) {
	case map[string]any:
		for _, val := range x {
			if n := depth(val, d+1); n > max {
				max = n
			}
		}
	case []any:
		for _, val := range x {
			if n := depth(val, d+1); n > max {
				max = n
			}
		}
	}
	return max
}

func validateReport(r *usage.Report, lim Limits, now time.Time) *InvalidError {
	if !isPrefixedUUID(r.ReportID, "usg_") {
		return invalid("report_id", `must be "usg_" and a lowercase UUID`)
	}
	if !isSlug(r.Org) {
		return invalid("org", "must be an org slug")
	}
	if !isSlug(r.Job) {
		return invalid("job", "must be a job slug")
	}
	if !isRunID(r.RunID) {
		return invalid("run_id", "must be 1-128 characters of A-Z a-z 0-9 . _ : -")
	}
	longRun := lim
	longRun.MaxEventAge = 366 * 24 * time.Hour
	if err := timestamp("started_at", r.StartedAt, longRun, now); err != nil {
		return err
	}
	if err := timestamp("ended_at", r.EndedAt, lim, now); err != nil {
		return err
	}
	if r.EndedAt.Before(r.StartedAt) {
		return invalid("ended_at", "is before started_at")
	}
	for name, f := range map[string]float64{"cpu_user_seconds": r.CPUUserSeconds, "cpu_system_seconds": r.CPUSystemSeconds, "wall_seconds": r.WallSeconds} {
		if math.IsNaN(f) || math.IsInf(f, 0) || f < 0 {
			return invalid(name, "must be a finite number >= 0")
		}
	}
	for name, n := range map[string]int64{"max_rss_bytes": r.MaxRSSBytes, "denials": r.Denials, "redactions": r.Redactions, "stdout_bytes": r.StdoutBytes, "stderr_bytes": r.StderrBytes} {
		if n < 0 {
			return invalid(name, "must be >= 0")
		}
	}
	if r.ExitCode != nil && (*r.ExitCode < math.MinInt32 || *r.ExitCode > math.MaxInt32) {
		return invalid("exit_code", "out of range")
	}
	if len(r.Egress) > 1024 {
		return invalid("egress", "%d destinations, the limit is 1024", len(r.Egress))
	}
	for k, e := range r.Egress {
		if err := text("egress key", k, 300, true); err != nil {
			return err
		}
		if e.BytesIn < 0 || e.BytesOut < 0 || e.Requests < 0 || e.Denials < 0 {
			return invalid("egress", "%q has a negative counter", k)
		}
	}
	switch r.Enforcement {
	case "", "cgroup-ebpf", "network-only":
	default:
		return invalid("enforcement", `must be "cgroup-ebpf" or "network-only"`)
	}
	return nil
}

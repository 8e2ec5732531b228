package ingestclient

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"time"

	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/go-json-experiment/json/jsontext"
)

// A sidecar sends every audit event it records, so the request body is
// written by hand rather than by encoding/json's reflection, which cost
// more than the rest of the client. The output is the JSON encoding/json
// gives for the same events (field order, omitempty, sorted metadata keys,
// RFC 3339 timestamps), except that <, > and & are not escaped: JSON does
// not need it, and the dispatcher then takes its fast path for metadata
// without escape sequences.

// maxMetadataDepth bounds the recursion into metadata (a map can hold
// itself); the dispatcher refuses metadata nested deeper than 8 anyway.
const maxMetadataDepth = 32

var errTooDeep = errors.New("metadata nested too deep (a map that holds itself?)")

// appendEventsBody appends {"events":[...]} to dst.
func appendEventsBody(dst []byte, events []audit.Event) ([]byte, error) {
	dst = append(dst, `{"events":[`...)
	for i := range events {
		if i > 0 {
			dst = append(dst, ',')
		}
		var err error
		if dst, err = appendEvent(dst, &events[i]); err != nil {
			return nil, fmt.Errorf("event %d (%s): %w", i, events[i].EventID, err)
		}
	}
	return append(dst, "]}"...), nil
}

// appendEvent appends ev as encoding/json would encode an audit.Event.
func appendEvent(dst []byte, ev *audit.Event) ([]byte, error) {
	dst = append(dst, `{"timestamp":`...)
	if y := ev.Timestamp.Year(); y < 0 || y >= 10000 {
		// time.Time's MarshalJSON refuses these too.
		return nil, fmt.Errorf("timestamp year %d outside [0,9999]", y)
	}
	dst = append(dst, '"')
	dst = ev.Timestamp.AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","event_type":`...)
	dst = appendString(dst, ev.EventType)
	dst = append(dst, `,"event_id":`...)
	dst = appendString(dst, ev.EventID)
	dst = append(dst, `,"actor":{"type":`...)
	dst = appendString(dst, ev.Actor.Type)
	dst = append(dst, `,"id":`...)
	dst = appendString(dst, ev.Actor.ID)
	if ev.Actor.IPAddress != "" {
		dst = append(dst, `,"ip_address":`...)
		dst = appendString(dst, ev.Actor.IPAddress)
	}
	if ev.Actor.UserAgent != "" {
		dst = append(dst, `,"user_agent":`...)
		dst = appendString(dst, ev.Actor.UserAgent)
	}
	dst = append(dst, `},"resource":{"type":`...)
	dst = appendString(dst, ev.Resource.Type)
	dst = append(dst, `,"id":`...)
	dst = appendString(dst, ev.Resource.ID)
	dst = append(dst, `,"tenant_id":`...)
	dst = appendString(dst, ev.Resource.TenantID)
	dst = append(dst, `},"action":`...)
	dst = appendString(dst, ev.Action)
	dst = append(dst, `,"result":`...)
	dst = appendString(dst, ev.Result)
	if len(ev.Metadata) > 0 {
		dst = append(dst, `,"metadata":`...)
		var err error
		if dst, err = appendMap(dst, ev.Metadata, 1); err != nil {
			return nil, fmt.Errorf("metadata: %w", err)
		}
	}
	if ev.RequestID != "" {
		dst = append(dst, `,"request_id":`...)
		dst = appendString(dst, ev.RequestID)
	}
	return append(dst, '}'), nil
}

// appendString appends s as a JSON string. Invalid UTF-8 becomes U+FFFD,
// as with encoding/json.
func appendString(dst []byte, s string) []byte {
	dst, _ = jsontext.AppendQuote(dst, s) // the error only reports invalid UTF-8, already replaced
	return dst
}

// appendMap appends m with its keys sorted, as encoding/json does.
func appendMap(dst []byte, m map[string]any, depth int) ([]byte, error) {
	if m == nil {
		return append(dst, "null"...), nil
	}
	if depth > maxMetadataDepth {
		return nil, errTooDeep
	}
	var stack [16]string
	keys := stack[:0]
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	dst = append(dst, '{')
	for i, k := range keys {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendString(dst, k)
		dst = append(dst, ':')
		var err error
		if dst, err = appendValue(dst, m[k], depth); err != nil {
			return nil, err
		}
	}
	return append(dst, '}'), nil
}

// appendValue appends a metadata value: the types JSON decoding yields and
// the integers and floats callers put in metadata are written directly,
// anything else by encoding/json.
func appendValue(dst []byte, v any, depth int) ([]byte, error) {
	switch x := v.(type) {
	case nil:
		return append(dst, "null"...), nil
	case string:
		return appendString(dst, x), nil
	case bool:
		return strconv.AppendBool(dst, x), nil
	case int:
		return strconv.AppendInt(dst, int64(x), 10), nil
	case int32:
		return strconv.AppendInt(dst, int64(x), 10), nil
	case int64:
		return strconv.AppendInt(dst, x, 10), nil
	case uint32:
		return strconv.AppendUint(dst, uint64(x), 10), nil
	case uint64:
		return strconv.AppendUint(dst, x, 10), nil
	case float64:
		return appendFloat(dst, x, 64)
	case float32:
		return appendFloat(dst, float64(x), 32)
	case map[string]any:
		return appendMap(dst, x, depth+1)
	case []any:
		if x == nil {
			return append(dst, "null"...), nil
		}
		if depth+1 > maxMetadataDepth {
			return nil, errTooDeep
		}
		dst = append(dst, '[')
		for i, e := range x {
			if i > 0 {
				dst = append(dst, ',')
			}
			var err error
			if dst, err = appendValue(dst, e, depth+1); err != nil {
				return nil, err
			}
		}
		return append(dst, ']'), nil
	default:
		b, err := json.Marshal(x)
		if err != nil {
			return nil, err
		}
		return append(dst, b...), nil
	}
}

// appendFloat formats f as encoding/json does (ES6 number formatting),
// refusing NaN and infinities as it does.
func appendFloat(dst []byte, f float64, bits int) ([]byte, error) {
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return nil, fmt.Errorf("unsupported value %v", f)
	}
	abs := math.Abs(f)
	format := byte('f')
	if abs != 0 {
		if bits == 64 && (abs < 1e-6 || abs >= 1e21) || bits == 32 && (float32(abs) < 1e-6 || float32(abs) >= 1e21) {
			format = 'e'
		}
	}
	dst = strconv.AppendFloat(dst, f, format, -1, bits)
	if format == 'e' {
		// clean up e-09 to e-9
		n := len(dst)
		if n >= 4 && dst[n-4] == 'e' && dst[n-3] == '-' && dst[n-2] == '0' {
			dst[n-2] = dst[n-1]
			dst = dst[:n-1]
		}
	}
	return dst, nil
}

package ingest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/cordon-dev/cordon/dispatcher/auditstore"
	"github.com/go-json-experiment/json/jsontext"
)

// The events body is decoded by hand over a jsontext.Decoder (the tokenizer
// of the Go team's encoding/json/v2; an import path change once Go ships it
// without GOEXPERIMENT) instead of by reflection with encoding/json: at tens
// of thousands of events a second, decoding was the largest cost of the
// dispatcher. The tokenizer validates the syntax (including UTF-8 and
// duplicate object names); this file maps the fields, refusing unknown
// ones, and takes every string that holds no escape sequence as a slice of
// one copy of the body, so an event costs no allocation per field.

// bodyPool recycles request body buffers; bodies larger than maxPooledBody
// are left to the garbage collector so one huge request does not pin memory.
var bodyPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

const maxPooledBody = 1 << 20

// readBody reads at most limit bytes of r into a pooled buffer; the caller
// must hand it back with putBody once nothing refers to its bytes.
func readBody(r io.Reader, limit int64) (*bytes.Buffer, error) {
	buf := bodyPool.Get().(*bytes.Buffer)
	buf.Reset()
	if _, err := buf.ReadFrom(io.LimitReader(r, limit+1)); err != nil {
		putBody(buf)
		return nil, fmt.Errorf("read request body: %w", err)
	}
	if int64(buf.Len()) > limit {
		putBody(buf)
		return nil, &TooLargeError{Limit: limit}
	}
	return buf, nil
}

func putBody(buf *bytes.Buffer) {
	if buf.Cap() <= maxPooledBody {
		bodyPool.Put(buf)
	}
}

// eventsDecoder decodes one {"events":[...]} body.
type eventsDecoder struct {
	dec  *jsontext.Decoder
	body []byte // what dec reads; raw metadata values are slices of it
	src  string // body, copied once; fields without escapes are slices of it
}

// malformed is the error for a body that is not the JSON expected.
func malformed(format string, args ...any) *InvalidError {
	return &InvalidError{Index: -1, Reason: "malformed JSON body: " + fmt.Sprintf(format, args...)}
}

// syntaxError turns a tokenizer error into a malformed-body error.
func syntaxError(err error) *InvalidError {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return malformed("unexpected end of the body")
	}
	return malformed("%v", err)
}

// decodeEventsBody decodes body into records, at most maxItems of them.
// Their RawMetadata is still the raw value as sent, a slice of body, for
// prepareMetadata. It refuses unknown fields, values of the wrong
// type and data after the top-level object, as encoding/json's strict
// decoding did; a null field leaves the zero value, as it did.
func decodeEventsBody(body []byte, maxItems int) ([]auditstore.Record, error) {
	d := &eventsDecoder{
		// AllowDuplicateNames(false) is the default: a field sent twice
		// (two tenant_ids, say) is refused rather than one silently
		// winning.
		dec:  jsontext.NewDecoder(bytes.NewBuffer(body)),
		body: body,
		src:  string(body),
	}
	recs, err := d.topLevel(maxItems)
	if err != nil {
		return nil, err
	}
	if _, err := d.dec.ReadValue(); !errors.Is(err, io.EOF) {
		return nil, malformed("data after the top-level object")
	}
	return recs, nil
}

// topLevel decodes the top-level value: the object, or null (no events, as
// encoding/json decoded it).
func (d *eventsDecoder) topLevel(maxItems int) ([]auditstore.Record, error) {
	if ok, err := d.null(); ok || err != nil {
		return nil, err
	}
	if err := d.begin('{', `the body`); err != nil {
		return nil, err
	}
	var recs []auditstore.Record
	for d.dec.PeekKind() != '}' {
		name, err := d.name()
		if err != nil {
			return nil, err
		}
		switch name {
		case "events":
			if recs, err = d.events(maxItems); err != nil {
				return nil, err
			}
		default:
			return nil, malformed("json: unknown field %q", name)
		}
	}
	if _, err := d.dec.ReadToken(); err != nil {
		return nil, syntaxError(err)
	}
	return recs, nil
}

// begin reads the start of an object ('{') or array ('['); what names the
// value in errors.
func (d *eventsDecoder) begin(kind jsontext.Kind, what string) error {
	k := d.dec.PeekKind()
	if k == 0 {
		_, err := d.dec.ReadToken()
		return syntaxError(err)
	}
	if k != kind {
		want := "an object"
		if kind == '[' {
			want = "an array"
		}
		return malformed("%s: want %s, got %s", what, want, k)
	}
	_, err := d.dec.ReadToken()
	if err != nil {
		return syntaxError(err)
	}
	return nil
}

// null consumes a null and reports whether there was one.
func (d *eventsDecoder) null() (bool, error) {
	if d.dec.PeekKind() != 'n' {
		return false, nil
	}
	_, err := d.dec.ReadToken()
	if err != nil {
		return false, syntaxError(err)
	}
	return true, nil
}

// name reads an object member name.
func (d *eventsDecoder) name() (string, error) {
	v, err := d.dec.ReadValue()
	if err != nil {
		return "", syntaxError(err)
	}
	return d.unquote(v)
}

// unquote returns the string value v (which must be a string) as a slice
// of src when it holds no escape sequence, else unquoted.
func (d *eventsDecoder) unquote(v jsontext.Value) (string, error) {
	if bytes.IndexByte(v, '\\') < 0 {
		end := int(d.dec.InputOffset()) - 1 // before the closing quote
		return d.src[end-(len(v)-2) : end], nil
	}
	b, err := jsontext.AppendUnquote(nil, v)
	if err != nil {
		return "", syntaxError(err)
	}
	return string(b), nil
}

// str reads a string field (null leaves "").
func (d *eventsDecoder) str(field string) (string, error) {
	v, err := d.dec.ReadValue()
	if err != nil {
		return "", syntaxError(err)
	}
	switch v.Kind() {
	case '"':
		return d.unquote(v)
	case 'n':
		return "", nil
	}
	return "", malformed("%s: want a string, got %s", field, v.Kind())
}

// timestamp reads an RFC 3339 time field, as time.Time's UnmarshalJSON
// does (null leaves the zero time).
func (d *eventsDecoder) timestamp(field string) (time.Time, error) {
	var t time.Time
	if ok, err := d.null(); ok || err != nil {
		return t, err
	}
	s, err := d.str(field)
	if err != nil {
		return t, err
	}
	if err := t.UnmarshalText([]byte(s)); err != nil {
		return t, malformed("%s: %v", field, err)
	}
	return t, nil
}

func (d *eventsDecoder) events(maxItems int) ([]auditstore.Record, error) {
	if ok, err := d.null(); ok || err != nil {
		return nil, err
	}
	if err := d.begin('[', `"events"`); err != nil {
		return nil, err
	}
	// Sidecars send batches of about a hundred: guess from the body size
	// (a typical event is 300-500 bytes) to avoid regrowing the slice.
	recs := make([]auditstore.Record, 0, min(maxItems, len(d.src)/256+1))
	for d.dec.PeekKind() != ']' {
		if len(recs) == maxItems {
			return nil, &InvalidError{Index: -1, Reason: fmt.Sprintf("more than %d events in one request, the limit is %d: split the batch", maxItems, maxItems)}
		}
		recs = append(recs, auditstore.Record{})
		if err := d.event(&recs[len(recs)-1]); err != nil {
			return nil, err
		}
	}
	if _, err := d.dec.ReadToken(); err != nil {
		return nil, syntaxError(err)
	}
	return recs, nil
}

func (d *eventsDecoder) event(rec *auditstore.Record) error {
	if ok, err := d.null(); ok || err != nil {
		return err
	}
	if err := d.begin('{', "event"); err != nil {
		return err
	}
	ev := &rec.Event
	for d.dec.PeekKind() != '}' {
		name, err := d.name()
		if err != nil {
			return err
		}
		switch name {
		case "timestamp":
			ev.Timestamp, err = d.timestamp(name)
		case "event_type":
			ev.EventType, err = d.str(name)
		case "event_id":
			ev.EventID, err = d.str(name)
		case "actor":
			err = d.object(name, func(field string) (err error) {
				switch field {
				case "type":
					ev.Actor.Type, err = d.str("actor.type")
				case "id":
					ev.Actor.ID, err = d.str("actor.id")
				case "ip_address":
					ev.Actor.IPAddress, err = d.str("actor.ip_address")
				case "user_agent":
					ev.Actor.UserAgent, err = d.str("actor.user_agent")
				default:
					err = malformed("json: unknown field %q", field)
				}
				return err
			})
		case "resource":
			err = d.object(name, func(field string) (err error) {
				switch field {
				case "type":
					ev.Resource.Type, err = d.str("resource.type")
				case "id":
					ev.Resource.ID, err = d.str("resource.id")
				case "tenant_id":
					ev.Resource.TenantID, err = d.str("resource.tenant_id")
				default:
					err = malformed("json: unknown field %q", field)
				}
				return err
			})
		case "action":
			ev.Action, err = d.str(name)
		case "result":
			ev.Result, err = d.str(name)
		case "request_id":
			ev.RequestID, err = d.str(name)
		case "metadata":
			var v jsontext.Value
			if v, err = d.dec.ReadValue(); err != nil {
				return syntaxError(err)
			}
			// Valid JSON of any kind; prepareMetadata wants an object
			// and copies it out of the body.
			end := int(d.dec.InputOffset())
			rec.RawMetadata = d.body[end-len(v) : end]
		default:
			err = malformed("json: unknown field %q", name)
		}
		if err != nil {
			return err
		}
	}
	if _, err := d.dec.ReadToken(); err != nil {
		return syntaxError(err)
	}
	return nil
}

// object reads a nested object (null leaves it as it is), calling member
// for each member name with the decoder at its value.
func (d *eventsDecoder) object(what string, member func(name string) error) error {
	if ok, err := d.null(); ok || err != nil {
		return err
	}
	if err := d.begin('{', what); err != nil {
		return err
	}
	for d.dec.PeekKind() != '}' {
		name, err := d.name()
		if err != nil {
			return err
		}
		if err := member(name); err != nil {
			return err
		}
	}
	if _, err := d.dec.ReadToken(); err != nil {
		return syntaxError(err)
	}
	return nil
}

package routeconfig

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// This file is the protobuf wire form of RouteConfiguration.
//
// Marshal writes the deterministic form (fields in field-number order with
// oneof members last, map entries sorted by key, zero proto3 scalars left
// out), byte for byte what
// google.golang.org/protobuf writes for the same go-control-plane message
// with MarshalOptions{Deterministic: true}; the tests check that.
//
// Unmarshal is deliberately stricter than a protobuf decoder: every field
// it does not know, at any depth, is an error rather than an ignored
// unknown field, because a proxy must not enforce a route whose meaning it
// only partly understood. It also refuses what a protobuf decoder would
// merge or let win silently: a singular field or oneof sent twice, two
// members of one oneof, and a map key sent twice. No encoder of a
// well-formed message produces any of those, so the only effect is that
// such input is NACKed.

// maxDepth bounds the nesting of metadata values (cordon's is 4 deep), so
// hostile input cannot exhaust the stack.
const maxDepth = 32

// Marshal returns rc's deterministic protobuf wire form.
func Marshal(rc *RouteConfiguration) []byte {
	var b []byte
	b = appendString(b, 1, rc.Name)
	for _, vh := range rc.VirtualHosts {
		b = appendMessage(b, 2, vh.appendWire(nil))
	}
	if rc.Metadata != nil {
		b = appendMessage(b, 17, rc.Metadata.appendWire(nil))
	}
	return b
}

func (vh *VirtualHost) appendWire(b []byte) []byte {
	b = appendString(b, 1, vh.Name)
	for _, d := range vh.Domains {
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendString(b, d)
	}
	for _, r := range vh.Routes {
		b = appendMessage(b, 3, r.appendWire(nil))
	}
	for _, h := range vh.ResponseHeadersToAdd {
		var hb []byte
		if h.Header != nil {
			var vb []byte
			vb = appendString(vb, 1, h.Header.Key)
			vb = appendString(vb, 2, h.Header.Value)
			hb = appendMessage(hb, 1, vb)
		}
		b = appendMessage(b, 10, hb)
	}
	if vh.Metadata != nil {
		b = appendMessage(b, 24, vh.Metadata.appendWire(nil))
	}
	return b
}

func (r *Route) appendWire(b []byte) []byte {
	if m := r.Match; m != nil {
		var mb []byte
		if m.Prefix != nil {
			mb = appendOneofString(mb, 1, *m.Prefix)
		}
		if m.ConnectMatcher {
			mb = appendMessage(mb, 12, nil)
		}
		b = appendMessage(b, 1, mb)
	}
	b = appendString(b, 14, r.Name)
	// The action oneof comes last.
	if a := r.Route; a != nil {
		var ab []byte
		for _, u := range a.UpgradeConfigs {
			var ub []byte
			ub = appendString(ub, 1, u.UpgradeType)
			if u.ConnectConfig {
				ub = appendMessage(ub, 3, nil)
			}
			ab = appendMessage(ab, 25, ub)
		}
		if a.Cluster != nil { // the cluster_specifier oneof, last
			ab = appendOneofString(ab, 1, *a.Cluster)
		}
		b = appendMessage(b, 2, ab)
	}
	if d := r.DirectResponse; d != nil {
		var db []byte
		if d.Status != 0 {
			db = protowire.AppendTag(db, 1, protowire.VarintType)
			db = protowire.AppendVarint(db, uint64(d.Status))
		}
		if d.Body != nil {
			var sb []byte
			if d.Body.InlineString != nil {
				sb = appendOneofString(sb, 3, *d.Body.InlineString)
			}
			db = appendMessage(db, 2, sb)
		}
		b = appendMessage(b, 7, db)
	}
	return b
}

func (m *Metadata) appendWire(b []byte) []byte { return appendMap(b, m.FilterMetadata) }

func (s *Struct) appendWire(b []byte) []byte { return appendMap(b, s.Fields) }

func (v *Value) appendWire(b []byte) []byte {
	switch v.Kind {
	case KindNull:
		b = protowire.AppendTag(b, 1, protowire.VarintType)
		b = protowire.AppendVarint(b, 0)
	case KindNumber:
		b = protowire.AppendTag(b, 2, protowire.Fixed64Type)
		b = protowire.AppendFixed64(b, math.Float64bits(v.Number))
	case KindString:
		b = appendOneofString(b, 3, v.String)
	case KindBool:
		b = protowire.AppendTag(b, 4, protowire.VarintType)
		b = protowire.AppendVarint(b, protowire.EncodeBool(v.Bool))
	case KindStruct:
		b = appendMessage(b, 5, v.Struct.appendWire(nil))
	case KindList:
		var lb []byte
		for _, e := range v.List {
			lb = appendMessage(lb, 1, e.appendWire(nil))
		}
		b = appendMessage(b, 6, lb)
	}
	return b
}

// appendMap appends m as the map<string, message> field 1 (both
// Metadata.filter_metadata and Struct.fields), entries sorted by key.
func appendMap[V interface{ appendWire([]byte) []byte }](b []byte, m map[string]V) []byte {
	for _, k := range slices.Sorted(maps.Keys(m)) {
		var eb []byte
		eb = appendOneofString(eb, 1, k)
		eb = appendMessage(eb, 2, m[k].appendWire(nil))
		b = appendMessage(b, 1, eb)
	}
	return b
}

// appendString appends a proto3 string field, left out when empty.
func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	return appendOneofString(b, num, s)
}

// appendOneofString appends a string field that has presence (a oneof
// member or a map key), even when empty.
func appendOneofString(b []byte, num protowire.Number, s string) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func appendMessage(b []byte, num protowire.Number, m []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, m)
}

// Unmarshal parses the wire form of a RouteConfiguration, refusing every
// field the mapping does not use (see the top of this file).
func Unmarshal(b []byte) (*RouteConfiguration, error) {
	rc := &RouteConfiguration{}
	var once fieldSet
	err := eachField(b, "RouteConfiguration", func(f field) error {
		switch {
		case f.is(1, protowire.BytesType):
			return f.str(&once, &rc.Name)
		case f.is(2, protowire.BytesType):
			vh, err := unmarshalVirtualHost(f.b)
			rc.VirtualHosts = append(rc.VirtualHosts, vh)
			return err
		case f.is(17, protowire.BytesType):
			return setMessage(f, &once, &rc.Metadata, unmarshalMetadata)
		}
		return f.unknown()
	})
	if err != nil {
		return nil, err
	}
	return rc, nil
}

func unmarshalVirtualHost(b []byte) (*VirtualHost, error) {
	vh := &VirtualHost{}
	var once fieldSet
	return vh, eachField(b, "VirtualHost", func(f field) error {
		switch {
		case f.is(1, protowire.BytesType):
			return f.str(&once, &vh.Name)
		case f.is(2, protowire.BytesType):
			var d string
			err := f.str(nil, &d)
			vh.Domains = append(vh.Domains, d)
			return err
		case f.is(3, protowire.BytesType):
			r, err := unmarshalRoute(f.b)
			vh.Routes = append(vh.Routes, r)
			return err
		case f.is(10, protowire.BytesType):
			h, err := unmarshalHeaderValueOption(f.b)
			vh.ResponseHeadersToAdd = append(vh.ResponseHeadersToAdd, h)
			return err
		case f.is(24, protowire.BytesType):
			return setMessage(f, &once, &vh.Metadata, unmarshalMetadata)
		}
		return f.unknown()
	})
}

func unmarshalRoute(b []byte) (*Route, error) {
	r := &Route{}
	var once fieldSet
	return r, eachField(b, "Route", func(f field) error {
		switch {
		case f.is(1, protowire.BytesType):
			return setMessage(f, &once, &r.Match, unmarshalRouteMatch)
		case f.is(2, protowire.BytesType), f.is(7, protowire.BytesType):
			if r.Route != nil || r.DirectResponse != nil {
				return f.errorf("a second action (the oneof is already set)")
			}
			if f.num == 2 {
				return setMessage(f, &once, &r.Route, unmarshalRouteAction)
			}
			return setMessage(f, &once, &r.DirectResponse, unmarshalDirectResponse)
		case f.is(14, protowire.BytesType):
			return f.str(&once, &r.Name)
		}
		return f.unknown()
	})
}

func unmarshalRouteMatch(b []byte) (*RouteMatch, error) {
	m := &RouteMatch{}
	var set bool // the path specifier oneof
	return m, eachField(b, "RouteMatch", func(f field) error {
		if (f.is(1, protowire.BytesType) || f.is(12, protowire.BytesType)) && set {
			return f.errorf("a second path specifier (the oneof is already set)")
		}
		switch {
		case f.is(1, protowire.BytesType):
			set = true
			m.Prefix = new(string)
			return f.str(nil, m.Prefix)
		case f.is(12, protowire.BytesType):
			set, m.ConnectMatcher = true, true
			return emptyMessage(f.b, "RouteMatch.ConnectMatcher")
		}
		return f.unknown()
	})
}

func unmarshalRouteAction(b []byte) (*RouteAction, error) {
	a := &RouteAction{}
	return a, eachField(b, "RouteAction", func(f field) error {
		switch {
		case f.is(1, protowire.BytesType):
			if a.Cluster != nil {
				return f.errorf("a second cluster specifier (the oneof is already set)")
			}
			a.Cluster = new(string)
			return f.str(nil, a.Cluster)
		case f.is(25, protowire.BytesType):
			u, err := unmarshalUpgradeConfig(f.b)
			a.UpgradeConfigs = append(a.UpgradeConfigs, u)
			return err
		}
		return f.unknown()
	})
}

func unmarshalUpgradeConfig(b []byte) (*UpgradeConfig, error) {
	u := &UpgradeConfig{}
	var once fieldSet
	return u, eachField(b, "RouteAction.UpgradeConfig", func(f field) error {
		switch {
		case f.is(1, protowire.BytesType):
			return f.str(&once, &u.UpgradeType)
		case f.is(3, protowire.BytesType):
			if err := once.add(f); err != nil {
				return err
			}
			u.ConnectConfig = true
			return emptyMessage(f.b, "RouteAction.UpgradeConfig.ConnectConfig")
		}
		return f.unknown()
	})
}

func unmarshalDirectResponse(b []byte) (*DirectResponseAction, error) {
	d := &DirectResponseAction{}
	var once fieldSet
	return d, eachField(b, "DirectResponseAction", func(f field) error {
		switch {
		case f.is(1, protowire.VarintType):
			if err := once.add(f); err != nil {
				return err
			}
			if f.u > math.MaxUint32 {
				// A protobuf decoder would truncate to 32 bits; a status
				// that only means something after truncation is refused.
				return f.errorf("status %d out of range", f.u)
			}
			d.Status = uint32(f.u)
			return nil
		case f.is(2, protowire.BytesType):
			return setMessage(f, &once, &d.Body, unmarshalDataSource)
		}
		return f.unknown()
	})
}

func unmarshalDataSource(b []byte) (*DataSource, error) {
	d := &DataSource{}
	return d, eachField(b, "DataSource", func(f field) error {
		if f.is(3, protowire.BytesType) {
			if d.InlineString != nil {
				return f.errorf("a second specifier (the oneof is already set)")
			}
			d.InlineString = new(string)
			return f.str(nil, d.InlineString)
		}
		return f.unknown()
	})
}

func unmarshalHeaderValueOption(b []byte) (*HeaderValueOption, error) {
	h := &HeaderValueOption{}
	var once fieldSet
	return h, eachField(b, "HeaderValueOption", func(f field) error {
		if f.is(1, protowire.BytesType) {
			return setMessage(f, &once, &h.Header, unmarshalHeaderValue)
		}
		return f.unknown()
	})
}

func unmarshalHeaderValue(b []byte) (*HeaderValue, error) {
	h := &HeaderValue{}
	var once fieldSet
	return h, eachField(b, "HeaderValue", func(f field) error {
		switch {
		case f.is(1, protowire.BytesType):
			return f.str(&once, &h.Key)
		case f.is(2, protowire.BytesType):
			return f.str(&once, &h.Value)
		}
		return f.unknown()
	})
}

func unmarshalMetadata(b []byte) (*Metadata, error) {
	m := &Metadata{FilterMetadata: map[string]*Struct{}}
	return m, eachField(b, "Metadata", func(f field) error {
		if f.is(1, protowire.BytesType) {
			return mapEntry(f, "Metadata.filter_metadata", m.FilterMetadata, func(v []byte) (*Struct, error) {
				return unmarshalStruct(v, 0)
			})
		}
		return f.unknown()
	})
}

func unmarshalStruct(b []byte, depth int) (*Struct, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("metadata nested deeper than %d", maxDepth)
	}
	s := &Struct{Fields: map[string]*Value{}}
	return s, eachField(b, "Struct", func(f field) error {
		if f.is(1, protowire.BytesType) {
			return mapEntry(f, "Struct.fields", s.Fields, func(v []byte) (*Value, error) {
				return unmarshalValue(v, depth+1)
			})
		}
		return f.unknown()
	})
}

func unmarshalValue(b []byte, depth int) (*Value, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("metadata nested deeper than %d", maxDepth)
	}
	v := &Value{}
	return v, eachField(b, "Value", func(f field) error {
		if f.num >= 1 && f.num <= 6 && v.Kind != KindNone {
			return f.errorf("a second kind (the oneof is already set)")
		}
		switch {
		case f.is(1, protowire.VarintType):
			v.Kind = KindNull
			if f.u != 0 {
				return f.errorf("null_value %d: want NULL_VALUE (0)", f.u)
			}
			return nil
		case f.is(2, protowire.Fixed64Type):
			v.Kind, v.Number = KindNumber, math.Float64frombits(f.u)
			return nil
		case f.is(3, protowire.BytesType):
			v.Kind = KindString
			return f.str(nil, &v.String)
		case f.is(4, protowire.VarintType):
			if f.u > 1 {
				// A protobuf decoder reads any non-zero varint as true.
				return f.errorf("bool_value %d: want 0 or 1", f.u)
			}
			v.Kind, v.Bool = KindBool, f.u == 1
			return nil
		case f.is(5, protowire.BytesType):
			v.Kind = KindStruct
			var err error
			v.Struct, err = unmarshalStruct(f.b, depth+1)
			return err
		case f.is(6, protowire.BytesType):
			v.Kind = KindList
			return eachField(f.b, "ListValue", func(f field) error {
				if f.is(1, protowire.BytesType) {
					e, err := unmarshalValue(f.b, depth+1)
					v.List = append(v.List, e)
					return err
				}
				return f.unknown()
			})
		}
		return f.unknown()
	})
}

// mapEntry parses a map<string, message> entry, key (1) and value (2),
// either of which may be absent (then "" and an empty message), and stores
// the value parsed with parse in m, refusing a key m already has.
func mapEntry[V any](f field, what string, m map[string]V, parse func([]byte) (V, error)) error {
	var k string
	var v []byte
	var once fieldSet
	err := eachField(f.b, what, func(f field) error {
		switch {
		case f.is(1, protowire.BytesType):
			return f.str(&once, &k)
		case f.is(2, protowire.BytesType):
			v = f.b
			return once.add(f)
		}
		return f.unknown()
	})
	if err != nil {
		return err
	}
	if _, dup := m[k]; dup {
		return fmt.Errorf("%s: key %q twice", what, k)
	}
	val, err := parse(v)
	m[k] = val
	return err
}

func emptyMessage(b []byte, what string) error {
	return eachField(b, what, func(f field) error { return f.unknown() })
}

// field is one field of a message on the wire.
type field struct {
	msg string // the message's name, for errors
	num protowire.Number
	typ protowire.Type
	b   []byte // BytesType
	u   uint64 // VarintType and Fixed64Type
}

func (f field) is(num protowire.Number, typ protowire.Type) bool { return f.num == num && f.typ == typ }

func (f field) errorf(format string, args ...any) error {
	return fmt.Errorf("%s field %d: %s", f.msg, f.num, fmt.Sprintf(format, args...))
}

// unknown is the error for a field the mapping never sets.
func (f field) unknown() error {
	return f.errorf("not a field cordon sets (wire type %d)", f.typ)
}

// str reads a string field; once, if not nil, refuses a second occurrence.
func (f field) str(once *fieldSet, dst *string) error {
	if once != nil {
		if err := once.add(f); err != nil {
			return err
		}
	}
	if !utf8.Valid(f.b) {
		return f.errorf("invalid UTF-8")
	}
	*dst = string(f.b)
	return nil
}

// setMessage reads the singular message field f into *dst with parse;
// once refuses a second occurrence.
func setMessage[T any](f field, once *fieldSet, dst *T, parse func([]byte) (T, error)) error {
	if err := once.add(f); err != nil {
		return err
	}
	var err error
	*dst, err = parse(f.b)
	return err
}

// fieldSet records which singular fields of a message were seen (every
// field number the mapping uses is below 64).
type fieldSet uint64

func (s *fieldSet) add(f field) error {
	if f.num >= 64 {
		return f.unknown()
	}
	if *s&(1<<f.num) != 0 {
		return f.errorf("sent twice")
	}
	*s |= 1 << f.num
	return nil
}

// eachField calls fn with every field of the message in b, in wire order.
func eachField(b []byte, msg string, fn func(field) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("%s: %w", msg, protowire.ParseError(n))
		}
		b = b[n:]
		f := field{msg: msg, num: num, typ: typ}
		switch typ {
		case protowire.BytesType:
			f.b, n = protowire.ConsumeBytes(b)
		case protowire.VarintType:
			f.u, n = protowire.ConsumeVarint(b)
		case protowire.Fixed64Type:
			f.u, n = protowire.ConsumeFixed64(b)
		default:
			// Groups and fixed32 appear nowhere in the mapping.
			return f.unknown()
		}
		if n < 0 {
			return fmt.Errorf("%s field %d: %w", msg, num, protowire.ParseError(n))
		}
		b = b[n:]
		if err := fn(f); err != nil {
			return err
		}
	}
	return nil
}

package routeconfig

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"strconv"

	"github.com/cordon-dev/cordon/internal/allowlist"
)

// Decode rebuilds the policy that the RouteConfiguration in wire (its
// protobuf encoding, as an xDS resource carries it) was built from. It
// errors on anything that is not exactly what Build produces, saying what is
// wrong; the xDS client NACKs with that message.
func Decode(wire []byte) (*allowlist.JobPolicy, error) {
	rc, err := Unmarshal(wire)
	if err != nil {
		return nil, fmt.Errorf("decode route configuration: %w", err)
	}
	return rc.Policy()
}

// Policy rebuilds the policy rc was built from. It errors unless rc is
// exactly what Build makes of that policy.
func (rc *RouteConfiguration) Policy() (*allowlist.JobPolicy, error) {
	p, err := policyOf(rc)
	if err != nil {
		return nil, fmt.Errorf("decode route configuration %q: %w", rc.Name, err)
	}
	again, err := Build(p)
	if err != nil {
		return nil, fmt.Errorf("decode route configuration %q: %w", rc.Name, err)
	}
	// Compared in the deterministic wire form: Unmarshal keeps everything
	// that distinguishes two messages (it refuses whatever it does not
	// model), so equal bytes mean equal messages.
	if !bytes.Equal(Marshal(again), Marshal(rc)) {
		return nil, fmt.Errorf("decode route configuration %q: not in the exact form cordon generates (extra fields, or domains and routes that disagree with the %q metadata)", rc.Name, MetadataKey)
	}
	return p, nil
}

// policyOf reads the policy from rc's metadata; Decode then checks that
// the rest of rc agrees with it.
func policyOf(rc *RouteConfiguration) (*allowlist.JobPolicy, error) {
	org, job, err := ParseResourceName(rc.Name)
	if err != nil {
		return nil, err
	}
	md := cordonMetadata(rc.Metadata)
	if md == nil {
		return nil, fmt.Errorf("no %q metadata", MetadataKey)
	}
	f := fieldReader{where: "route configuration metadata", fields: md.Fields}
	p := &allowlist.JobPolicy{
		Org:   f.str("org"),
		Job:   f.str("job"),
		Class: allowlist.Class(f.str("class")),
		Mode:  allowlist.Mode(f.str("mode")),
	}
	if f.err == nil && (p.Org != org || p.Job != job) {
		return nil, fmt.Errorf("metadata names %s/%s, resource name %s/%s", p.Org, p.Job, org, job)
	}
	indexed := map[int]allowlist.Rule{}
	for _, v := range f.list("cidr_rules") {
		r := fieldReader{where: "cidr rule", fields: v.structFields()}
		i := r.index()
		rule := allowlist.Rule{Ports: r.ports(), Source: r.str("source")}
		if s := r.str("cidr"); r.err == nil {
			if rule.CIDR, r.err = netip.ParsePrefix(s); r.err != nil {
				r.err = fmt.Errorf("cidr rule: %w", r.err)
			}
		}
		if err := r.addRule(indexed, i, rule); err != nil {
			return nil, err
		}
	}
	if err := f.done(); err != nil {
		return nil, err
	}
	for _, vh := range rc.VirtualHosts {
		if vh.Name == denyVirtualHost {
			continue
		}
		vmd := cordonMetadata(vh.Metadata)
		if vmd == nil {
			return nil, fmt.Errorf("virtual host %q has no %q metadata", vh.Name, MetadataKey)
		}
		v := fieldReader{where: "virtual host " + strconv.Quote(vh.Name), fields: vmd.Fields}
		host := v.str("host")
		for _, rv := range v.list("rules") {
			r := fieldReader{where: "host rule of " + host, fields: rv.structFields()}
			i := r.index()
			rule := allowlist.Rule{Host: host, Ports: r.ports(), Source: r.str("source")}
			if err := r.addRule(indexed, i, rule); err != nil {
				return nil, err
			}
		}
		if err := v.done(); err != nil {
			return nil, err
		}
	}
	for i := range len(indexed) {
		r, ok := indexed[i]
		if !ok {
			return nil, fmt.Errorf("rule indexes are not 0..%d: %d is missing", len(indexed)-1, i)
		}
		p.Rules = append(p.Rules, r)
	}
	return p, nil
}

func cordonMetadata(m *Metadata) *Struct {
	if m == nil {
		return nil
	}
	return m.FilterMetadata[MetadataKey]
}

// structFields is v's fields when it is a struct, else nil (which the
// fieldReader then reports as missing fields).
func (v *Value) structFields() map[string]*Value {
	if v.Kind != KindStruct {
		return nil
	}
	return v.Struct.Fields
}

// maxRules bounds what a route configuration may claim, so a hostile index
// cannot make the decoder allocate.
const maxRules = 1 << 16

// addRule stores rule, read with f, in m at index i, once f has read it
// without an error.
func (f *fieldReader) addRule(m map[int]allowlist.Rule, i int, rule allowlist.Rule) error {
	if err := f.done(); err != nil {
		return err
	}
	if i < 0 || i >= maxRules {
		return fmt.Errorf("rule index %d out of range", i)
	}
	if _, dup := m[i]; dup {
		return fmt.Errorf("rule index %d appears twice", i)
	}
	m[i] = rule
	return nil
}

// fieldReader reads a metadata struct strictly: every field must have the
// expected kind, and done reports fields nobody read.
type fieldReader struct {
	where  string
	fields map[string]*Value
	read   []string
	err    error
}

func (f *fieldReader) get(key string) *Value {
	f.read = append(f.read, key)
	v, ok := f.fields[key]
	if !ok && f.err == nil {
		f.err = fmt.Errorf("%s: missing field %q", f.where, key)
	}
	return v
}

func (f *fieldReader) str(key string) string {
	v := f.get(key)
	if v == nil {
		return ""
	}
	if v.Kind != KindString {
		if f.err == nil {
			f.err = fmt.Errorf("%s: field %q is not a string", f.where, key)
		}
		return ""
	}
	return v.String
}

func (f *fieldReader) list(key string) []*Value {
	v := f.get(key)
	if v == nil {
		return nil
	}
	if v.Kind != KindList {
		if f.err == nil {
			f.err = fmt.Errorf("%s: field %q is not a list", f.where, key)
		}
		return nil
	}
	return v.List
}

func (f *fieldReader) integer(v *Value, what string, lo, hi float64) int {
	n := v.Number
	if v.Kind != KindNumber || n != float64(int64(n)) || n < lo || n > hi {
		if f.err == nil {
			f.err = fmt.Errorf("%s: %s is not an integer in [%v, %v]", f.where, what, lo, hi)
		}
		return -1
	}
	return int(n)
}

func (f *fieldReader) index() int {
	v := f.get("index")
	if v == nil {
		return -1
	}
	return f.integer(v, "index", 0, maxRules-1)
}

func (f *fieldReader) ports() []uint16 {
	var ports []uint16
	for _, v := range f.list("ports") {
		ports = append(ports, uint16(max(0, f.integer(v, "port", 1, 65535))))
	}
	return ports
}

func (f *fieldReader) done() error {
	if f.err != nil {
		return f.err
	}
	for k := range f.fields {
		if !slices.Contains(f.read, k) {
			return fmt.Errorf("%s: unknown field %q", f.where, k)
		}
	}
	return nil
}

package allowlist

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/publicsuffix"
	"gopkg.in/yaml.v3"

	"github.com/cordon-dev/cordon/internal/jobid"
)

// MaxFileSize is the largest allowlist file Parse reads, in bytes. Real
// files are a few KiB; the cap bounds what a hostile file can cost.
const MaxFileSize = 1 << 20

// The fields each mapping accepts. The JSON Schema test checks that
// deploy/allowlists/allowlist.schema.json names exactly these.
var (
	fileFields  = []string{"version", "org", "endpoint_sets", "webhooks", "jobs"}
	setFields   = []string{"platform_only", "entries"}
	entryFields = []string{"host", "cidr", "ports"}
	jobFields   = []string{"class", "mode", "allow", "webhooks"}
)

// parsed is Parse's result plus what LoadDir needs to check across files.
type parsed struct {
	file   *File
	orgPos Pos
}

// Parse parses and validates one allowlist file's bytes. name is used in
// positions. On failure the error is an ErrorList with every problem found.
func Parse(name string, data []byte) (*File, error) {
	p, errs := parse(name, data)
	if err := errs.err(); err != nil {
		return nil, err
	}
	return p.file, nil
}

// parser holds one file's state while it is checked.
type parser struct {
	name string
	errs ErrorList
}

func (p *parser) pos(n *yaml.Node) Pos { return Pos{File: p.name, Line: n.Line, Col: n.Column} }

func (p *parser) errorf(n *yaml.Node, format string, args ...any) {
	p.errs = append(p.errs, &Error{Pos: p.pos(n), Msg: fmt.Sprintf(format, args...)})
}

func (p *parser) errorAt(line, col int, format string, args ...any) {
	p.errs = append(p.errs, &Error{Pos: Pos{File: p.name, Line: line, Col: col}, Msg: fmt.Sprintf(format, args...)})
}

func parse(name string, data []byte) (parsed, ErrorList) {
	p := &parser{name: name}
	if len(data) > MaxFileSize {
		p.errorAt(1, 1, "file is %d bytes, over the %d-byte limit: remove entries no job uses", len(data), MaxFileSize)
		return parsed{}, p.errs
	}
	if !utf8.Valid(data) {
		line, col := invalidUTF8At(data)
		p.errorAt(line, col, "file is not valid UTF-8: save it as UTF-8")
		return parsed{}, p.errs
	}
	if i := bytes.IndexByte(data, 0); i >= 0 {
		line, col := lineCol(data, i)
		p.errorAt(line, col, "file contains a NUL byte: save it as UTF-8 text")
		return parsed{}, p.errs
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			p.errorAt(1, 1, "file is empty: write version: 1, org and jobs")
		} else {
			p.syntaxError(data, err)
		}
		return parsed{}, p.errs
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case err == nil:
		line := extra.Line
		if len(extra.Content) > 0 {
			line = extra.Content[0].Line
		}
		// Blame the "---" that starts it, the line to delete.
		blame := line
		for _, loc := range docStartRE.FindAllIndex(data, -1) {
			if l, _ := lineCol(data, loc[0]); l <= line {
				blame = l
			}
		}
		line = blame
		p.errorAt(line, 1, "file holds a second YAML document: one file is one org's policy, remove the '---' and what follows or move it to its own file")
		return parsed{}, p.errs
	case !errors.Is(err, io.EOF):
		p.syntaxError(data, err)
		return parsed{}, p.errs
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 {
		p.errorAt(1, 1, "file is not a YAML document: write version: 1, org and jobs")
		return parsed{}, p.errs
	}
	root := doc.Content[0]
	if p.hostile(root); len(p.errs) > 0 {
		return parsed{}, p.errs
	}
	f, orgPos := p.file(root)
	if len(p.errs) > 0 {
		return parsed{}, p.errs
	}
	return parsed{file: f, orgPos: orgPos}, nil
}

// docStartRE finds YAML document start markers.
var docStartRE = regexp.MustCompile(`(?m)^---(?:[ \t]|$)`)

// yamlLineRE finds the line yaml.v3 puts in most syntax errors.
var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// zeroBasedLine are the yaml.v3 errors whose "line N" is the 0-based line
// of the construct's start (its parser reports the context mark without
// adding one, and omits "line 0"), so N+1 is the line a human counts.
// Pinned by the syntax_* fixtures; yaml.v3 is frozen at v3.0.1.
var zeroBasedLine = []string{
	"did not find expected ',' or",
	"did not find expected key",
	"did not find expected node content",
	"did not find expected '-' indicator",
	"did not find expected <document start>",
	"found a tab character that violates indentation",
}

// unknownAnchorRE is yaml.v3's error for an alias to no anchor.
var unknownAnchorRE = regexp.MustCompile(`^yaml: unknown anchor '(.*)' referenced$`)

// syntaxError turns a yaml.v3 error into a positioned Error. yaml.v3 gives
// a line for most errors (see zeroBasedLine) and never a column.
func (p *parser) syntaxError(data []byte, err error) {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if m := yamlLineRE.FindStringSubmatch(err.Error()); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	}
	zeroBased := slices.ContainsFunc(zeroBasedLine, func(prefix string) bool { return strings.HasPrefix(msg, prefix) })
	if zeroBased {
		line++
	}
	// The common mistake: an unquoted "*.example.com", which YAML reads as
	// an alias. Point at it and say how to write it.
	if strings.HasPrefix(msg, "did not find expected alphabetic or numeric character") {
		if l, c, ok := find(data, unquotedStarRE, max(line, 1)); ok {
			p.errorAt(l, c, "invalid YAML (%s): quote hosts that start with '*', as in host: \"*.example.com\"", msg)
			return
		}
	}
	if m := unknownAnchorRE.FindStringSubmatch(err.Error()); m != nil {
		re := regexp.MustCompile(`\*` + regexp.QuoteMeta(m[1]))
		if l, c, ok := find(data, re, 1); ok {
			p.errorAt(l, c, "YAML alias *%s is not allowed (and refers to no anchor): write the value out, and quote hosts that start with '*'", m[1])
			return
		}
	}
	line = refineSyntaxLine(data, err, max(line-1, 1))
	col := indentCol(data, line)
	if lineStartsWithTab(data, line) {
		msg += ": indent with spaces, YAML does not allow tabs"
	}
	p.errorAt(line, col, "invalid YAML: %s", msg)
}

// refineMaxBytes bounds refineSyntaxLine to files of allowlist size.
const refineMaxBytes = 128 << 10

// refineSyntaxLine finds the line to fix for the syntax error err, at or
// after from: yaml.v3 reports the line where the enclosing construct
// starts, while a reviewer needs the line that broke it. That is the first
// line L such that the file's lines 1..L fail to parse with the same error
// as the whole file (shorter prefixes parse, or fail differently because
// they cut a valid multi-line construct short). The predicate is monotone
// in L, since yaml.v3 stops at the first error, so a binary search finds L
// in a logarithmic number of parses. If the file is over refineMaxBytes it
// returns from.
func refineSyntaxLine(data []byte, err error, from int) int {
	if len(data) > refineMaxBytes {
		return from
	}
	want := err.Error()
	// ends[i] is the offset just past line i+1.
	var ends []int
	for off := 0; off < len(data); {
		j := bytes.IndexByte(data[off:], '\n')
		if j < 0 {
			ends = append(ends, len(data))
			break
		}
		off += j + 1
		ends = append(ends, off)
	}
	if from > len(ends) {
		return from
	}
	lo, hi := from-1, len(ends)-1 // 0-based line indexes
	for lo < hi {
		mid := lo + (hi-lo)/2
		if perr := parseAll(data[:ends[mid]]); perr != nil && perr.Error() == want {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo + 1
}

// parseAll parses every YAML document in data and returns the first error.
func parseAll(data []byte) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var n yaml.Node
		if err := dec.Decode(&n); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

// lineStartsWithTab reports whether line's indentation holds a tab.
func lineStartsWithTab(data []byte, line int) bool {
	lines := bytes.SplitN(data, []byte("\n"), line+1)
	if line > len(lines) {
		return false
	}
	rest := bytes.TrimLeft(lines[line-1], " ")
	return len(rest) > 0 && rest[0] == '\t'
}

// indentCol is the column of the first character of line that is not a
// space, or 1.
func indentCol(data []byte, line int) int {
	for l := 1; l < line; l++ {
		j := bytes.IndexByte(data, '\n')
		if j < 0 {
			return 1
		}
		data = data[j+1:]
	}
	col := 1
	for _, c := range data {
		if c != ' ' {
			break
		}
		col++
	}
	return col
}

// unquotedStarRE finds a plain (unquoted) value that starts with '*'.
var unquotedStarRE = regexp.MustCompile(`(?m)^[ \t]*(?:-[ \t]+)?(?:[A-Za-z_]+:[ \t]+)?(\*)\S`)

// find returns the position of re's first match (its first group if it has
// one) on or after line from.
func find(data []byte, re *regexp.Regexp, from int) (line, col int, ok bool) {
	off := 0
	for i := 1; i < from && off < len(data); i++ {
		j := bytes.IndexByte(data[off:], '\n')
		if j < 0 {
			break
		}
		off += j + 1
	}
	loc := re.FindSubmatchIndex(data[off:])
	if loc == nil {
		return 0, 0, false
	}
	at := loc[0]
	if len(loc) >= 4 && loc[2] >= 0 {
		at = loc[2]
	}
	line, col = lineCol(data, off+at)
	return line, col, true
}

// lineCol is the 1-based line and column (in runes) of byte offset off.
func lineCol(data []byte, off int) (line, col int) {
	line = 1 + bytes.Count(data[:off], []byte("\n"))
	start := bytes.LastIndexByte(data[:off], '\n') + 1
	return line, 1 + utf8.RuneCount(data[start:off])
}

// invalidUTF8At finds the first invalid byte's line and column.
func invalidUTF8At(data []byte) (line, col int) {
	for off := 0; off < len(data); {
		r, size := utf8.DecodeRune(data[off:])
		if r == utf8.RuneError && size <= 1 {
			return lineCol(data, off)
		}
		off += size
	}
	return 1, 1
}

// hostile refuses the YAML features that make a small file expensive or a
// reviewed file mean something other than it reads: anchors and aliases
// (the "billion laughs" expansion, and a value defined far from its use),
// merge keys, and explicit tags.
func (p *parser) hostile(root *yaml.Node) {
	var walk func(n *yaml.Node, depth int)
	walk = func(n *yaml.Node, depth int) {
		if depth > 32 {
			p.errorf(n, "nesting is deeper than any allowlist needs: the format has at most 6 levels")
			return
		}
		switch {
		case n.Kind == yaml.AliasNode:
			p.errorf(n, "YAML alias *%s is not allowed: write the value out", n.Value)
			return
		case n.Anchor != "":
			p.errorf(n, "YAML anchor &%s is not allowed: allowlists are reviewed line by line, write values out where they are used", n.Anchor)
		case n.Tag == "!!merge":
			p.errorf(n, "YAML merge key << is not allowed: write the fields out")
		case n.Style&yaml.TaggedStyle != 0:
			p.errorf(n, "explicit YAML tag %s is not allowed: remove it", n.Tag)
		}
		for _, c := range n.Content {
			walk(c, depth+1)
		}
	}
	walk(root, 0)
}

// field is one key/value pair of a mapping.
type field struct{ key, val *yaml.Node }

// mapping checks that n is a mapping of unique string keys and returns its
// pairs in file order. allowed, when non-nil, is the closed set of keys.
func (p *parser) mapping(n *yaml.Node, what string, allowed []string) ([]field, bool) {
	if n.Kind != yaml.MappingNode {
		p.errorf(n, "%s must be a mapping, got %s", what, describe(n))
		return nil, false
	}
	var out []field
	seen := make(map[string]*yaml.Node)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode || k.Tag != "!!str" {
			p.errorf(k, "key in %s must be a string, got %s", what, describe(k))
			continue
		}
		if first, dup := seen[k.Value]; dup {
			p.errorf(k, "duplicate key %q in %s (first at line %d): remove one", k.Value, what, first.Line)
			continue
		}
		seen[k.Value] = k
		if allowed != nil && !slices.Contains(allowed, k.Value) {
			p.errorf(k, "unknown field %q in %s%s: allowed fields are %s", k.Value, what, didYouMean(k.Value, allowed), strings.Join(allowed, ", "))
			continue
		}
		out = append(out, field{k, v})
	}
	return out, true
}

// require reports each of names missing from fields, at the mapping n.
func (p *parser) require(n *yaml.Node, what string, fields []field, names ...string) {
	for _, name := range names {
		if !slices.ContainsFunc(fields, func(f field) bool { return f.key.Value == name }) {
			p.errorf(n, "%s is missing required field %q", what, name)
		}
	}
}

// describe names a node's type for "must be X, got Y" messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	case yaml.DocumentNode:
		return "a document"
	}
	switch n.Tag {
	case "!!null":
		return "nothing (null)"
	case "!!int":
		return "the integer " + n.Value
	case "!!float":
		return "the number " + n.Value
	case "!!bool":
		return "the boolean " + n.Value
	case "!!str":
		return strconv.Quote(n.Value)
	}
	return fmt.Sprintf("%s %q", n.Tag, n.Value)
}

func (p *parser) str(n *yaml.Node, what string) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!str" {
		p.errorf(n, "%s must be a string, got %s", what, describe(n))
		return "", false
	}
	return n.Value, true
}

func (p *parser) boolean(n *yaml.Node, what string) (bool, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
		p.errorf(n, "%s must be true or false, got %s", what, describe(n))
		return false, false
	}
	return strings.EqualFold(n.Value, "true"), true
}

// decimal reads a plain decimal integer; YAML's 0x, 0o and _ forms are
// refused so a reviewer reads the number the proxy uses.
func (p *parser) decimal(n *yaml.Node, what string) (int, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
		p.errorf(n, "%s must be an integer, got %s", what, describe(n))
		return 0, false
	}
	v, err := strconv.Atoi(n.Value)
	if err != nil || (len(n.Value) > 1 && n.Value[0] == '0') || strings.HasPrefix(n.Value, "+") {
		p.errorf(n, "%s %s must be written as a plain decimal number", what, n.Value)
		return 0, false
	}
	return v, true
}

func (p *parser) slug(n *yaml.Node, what string) (string, bool) {
	s, ok := p.str(n, what)
	if !ok {
		return "", false
	}
	// An org, job or endpoint set name is a slug: lowercase, and a valid
	// SPIFFE ID path segment (org and job become spiffe://TD/org/ORG/job/JOB).
	if !jobid.IsSlug(s) {
		p.errorf(n, "%s %q is not a valid name: use %s", what, s, jobid.SlugRule)
		return "", false
	}
	return s, true
}

// file checks the top-level mapping.
func (p *parser) file(root *yaml.Node) (*File, Pos) {
	f := &File{
		Path:         p.name,
		EndpointSets: map[string]*EndpointSet{},
		Jobs:         map[string]*Job{},
	}
	var orgPos Pos
	fields, ok := p.mapping(root, "the file", fileFields)
	if !ok {
		return f, orgPos
	}
	p.require(root, "the file", fields, "version", "org")
	var jobsNode, webhooksNode *yaml.Node
	for _, fl := range fields {
		switch fl.key.Value {
		case "version":
			if v, ok := p.decimal(fl.val, "version"); ok && v != 1 {
				p.errorf(fl.val, "unsupported version %d: this parser reads version 1", v)
			}
			f.Version = 1
		case "org":
			orgPos = p.pos(fl.val)
			f.Org, _ = p.slug(fl.val, "org")
		case "endpoint_sets":
			p.endpointSets(fl.val, f)
		case "webhooks":
			webhooksNode = fl.val
			p.webhooks(fl.val, f)
		case "jobs":
			jobsNode = fl.val
		}
	}
	if jobsNode != nil {
		p.jobs(jobsNode, f, webhooksNode)
	}
	return f, orgPos
}

func (p *parser) endpointSets(n *yaml.Node, f *File) {
	fields, ok := p.mapping(n, "endpoint_sets", nil)
	if !ok {
		return
	}
	for _, fl := range fields {
		// An invalid name is still registered (the file is refused anyway)
		// so that jobs allowing it do not also report it undefined.
		name, _ := p.slug(fl.key, "endpoint set name")
		if name == "" {
			name = fl.key.Value
		}
		what := "endpoint set " + name
		set := &EndpointSet{Name: name, Pos: p.pos(fl.key)}
		f.EndpointSets[name] = set
		sf, ok := p.mapping(fl.val, what, setFields)
		if !ok {
			continue
		}
		p.require(fl.val, what, sf, "entries")
		for _, s := range sf {
			switch s.key.Value {
			case "platform_only":
				set.PlatformOnly, _ = p.boolean(s.val, "platform_only")
			case "entries":
				set.Entries = p.entries(s.val, what)
			}
		}
	}
}

func (p *parser) entries(n *yaml.Node, what string) []Entry {
	if n.Kind != yaml.SequenceNode {
		p.errorf(n, "entries of %s must be a list, got %s", what, describe(n))
		return nil
	}
	if len(n.Content) == 0 {
		p.errorf(n, "%s has no entries: add one or delete the set", what)
		return nil
	}
	var out []Entry
	seen := map[string]Pos{}
	for _, en := range n.Content {
		e, ok := p.entry(en, what)
		if !ok {
			continue
		}
		key := e.Host
		if key == "" {
			key = e.CIDR.String()
		}
		if first, dup := seen[key]; dup {
			p.errorf(en, "%s lists %s twice (first at line %d): merge the ports into one entry", what, key, first.Line)
			continue
		}
		seen[key] = e.Pos
		out = append(out, e)
	}
	return out
}

func (p *parser) entry(n *yaml.Node, set string) (Entry, bool) {
	e := Entry{Pos: p.pos(n)}
	what := "entry of " + set
	fields, ok := p.mapping(n, what, entryFields)
	if !ok {
		return e, false
	}
	p.require(n, what, fields, "ports")
	var hostNode, cidrNode *yaml.Node
	good := len(p.errs)
	for _, fl := range fields {
		switch fl.key.Value {
		case "host":
			hostNode = fl.key
			e.Host, _ = p.host(fl.val)
		case "cidr":
			cidrNode = fl.key
			if s, ok := p.str(fl.val, "cidr"); ok {
				pfx, msg := parseCIDR(s)
				if msg != "" {
					p.errorf(fl.val, "%s", msg)
				}
				e.CIDR = pfx
			}
		case "ports":
			e.Ports = p.ports(fl.val)
		}
	}
	switch {
	case hostNode != nil && cidrNode != nil:
		p.errorf(cidrNode, "%s has both host and cidr: split it into two entries", what)
	case hostNode == nil && cidrNode == nil:
		p.errorf(n, "%s needs a host or a cidr", what)
	}
	return e, len(p.errs) == good
}

// host checks an entry's host pattern and returns it.
func (p *parser) host(n *yaml.Node) (string, bool) {
	s, ok := p.str(n, "host")
	if !ok {
		return "", false
	}
	name, wild := strings.CutPrefix(s, "*.")
	if strings.Contains(name, "*") {
		p.errorf(n, "host %q: '*' is allowed only as the whole first label, as in \"*.example.com\"", s)
		return "", false
	}
	canon, err := canonicalHost(name)
	switch {
	case errors.Is(err, ErrIPLiteral):
		if wild {
			p.errorf(n, "host %q wildcards an IP address: use a cidr entry", s)
			return "", false
		}
		p.errorf(n, "host %q is an IP address: use a cidr entry, as in cidr: %s", s, cidrHint(name))
		return "", false
	case err != nil:
		p.errorf(n, "host %q is not a valid DNS name: %s", s, unwrapHostErr(err))
		return "", false
	case canon != name:
		want := canon
		if wild {
			want = "*." + canon
		}
		p.errorf(n, "host %q is not canonical: write %q (hosts are lowercase punycode without a trailing dot)", s, want)
		return "", false
	}
	if wild {
		if ps, icann := publicsuffix.PublicSuffix(canon); ps == canon && (icann || !strings.Contains(canon, ".")) {
			p.errorf(n, "`%s` covers the public suffix %s: list the hosts you need", s, canon)
			return "", false
		}
	}
	return s, true
}

// cidrHint is the one-address prefix for an IP literal, for fix-it messages.
func cidrHint(s string) string {
	t := strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
	if a, err := netip.ParseAddr(t); err == nil {
		a = a.Unmap().WithZone("")
		return netip.PrefixFrom(a, a.BitLen()).String()
	}
	return "ADDRESS/32"
}

// unwrapHostErr drops the sentinel's text, which the message already says.
func unwrapHostErr(err error) string {
	msg := err.Error()
	return strings.TrimPrefix(msg, ErrBadHost.Error()+": ")
}

func (p *parser) ports(n *yaml.Node) []uint16 {
	if n.Kind != yaml.SequenceNode {
		p.errorf(n, "ports must be a list of port numbers, as in [443], got %s", describe(n))
		return nil
	}
	if len(n.Content) == 0 {
		p.errorf(n, "ports is empty: list the ports the entry allows, as in [443]")
		return nil
	}
	var out []uint16
	for _, pn := range n.Content {
		v, ok := p.decimal(pn, "port")
		if !ok {
			continue
		}
		if v < 1 || v > 65535 {
			p.errorf(pn, "port %d is out of range: use 1 to 65535", v)
			continue
		}
		if slices.Contains(out, uint16(v)) {
			p.errorf(pn, "port %d is listed twice: remove one", v)
			continue
		}
		out = append(out, uint16(v))
	}
	slices.Sort(out)
	return out
}

func (p *parser) webhooks(n *yaml.Node, f *File) {
	if n.Kind != yaml.SequenceNode {
		p.errorf(n, "webhooks must be a list of https URLs, got %s", describe(n))
		return
	}
	seen := map[string]int{}
	for _, wn := range n.Content {
		s, ok := p.str(wn, "webhook")
		if !ok {
			continue
		}
		w, msg := parseWebhook(s)
		if msg != "" {
			p.errorf(wn, "%s", msg)
			continue
		}
		if line, dup := seen[s]; dup {
			p.errorf(wn, "webhook %s is listed twice (first at line %d): remove one", s, line)
			continue
		}
		seen[s] = wn.Line
		w.Pos = p.pos(wn)
		f.Webhooks = append(f.Webhooks, w)
	}
}

// parseWebhook checks one webhook URL. The message, when not empty, never
// repeats userinfo, which may be a credential.
func parseWebhook(s string) (Webhook, string) {
	if !strings.HasPrefix(s, "https://") {
		return Webhook{}, fmt.Sprintf("webhook %q must be an https:// URL (seeds/000: TLS required)", s)
	}
	u, err := url.Parse(s)
	if err != nil {
		if strings.Contains(s, "@") {
			return Webhook{}, "webhook is not a valid URL: check it and remove any user:password@"
		}
		return Webhook{}, fmt.Sprintf("webhook %q is not a valid URL: %v", s, errors.Unwrap(err))
	}
	switch {
	case u.User != nil || strings.Contains(u.Host, "@"):
		return Webhook{}, "webhook URL carries user information: remove the user:password@ part; credentials do not belong in an allowlist"
	case strings.Contains(s, "#"):
		return Webhook{}, fmt.Sprintf("webhook %q has a fragment: remove the '#' and what follows", s)
	case u.RawQuery != "" || u.ForceQuery:
		return Webhook{}, fmt.Sprintf("webhook %q has a query: list the URL up to its path; the path is a prefix", s)
	case strings.Contains(s, `\`):
		return Webhook{}, fmt.Sprintf("webhook %q contains a backslash: write '/'", s)
	}
	host := u.Hostname()
	canon, err := canonicalHost(host)
	switch {
	case errors.Is(err, ErrIPLiteral):
		return Webhook{}, fmt.Sprintf("webhook %q has an IP address as its host: use the DNS name the service publishes", s)
	case err != nil:
		return Webhook{}, fmt.Sprintf("webhook %q has an invalid host: %s", s, unwrapHostErr(err))
	case canon != host:
		return Webhook{}, fmt.Sprintf("webhook %q host is not canonical: write %q", s, canon)
	}
	port := uint16(443)
	if ps := u.Port(); ps != "" {
		v, err := strconv.Atoi(ps)
		if err != nil || v < 1 || v > 65535 || ps[0] == '0' {
			return Webhook{}, fmt.Sprintf("webhook %q has port %q: use 1 to 65535 or leave it out for 443", s, ps)
		}
		port = uint16(v)
	} else if strings.HasSuffix(u.Host, ":") {
		return Webhook{}, fmt.Sprintf("webhook %q has an empty port: remove the ':'", s)
	}
	path := u.EscapedPath()
	if path == "" {
		path = "/"
	}
	for seg := range strings.SplitSeq(path, "/") {
		if d, err := url.PathUnescape(seg); err != nil || d == "." || d == ".." || strings.ContainsAny(d, "/\\") {
			return Webhook{}, fmt.Sprintf("webhook %q has a dot, encoded slash or invalid segment in its path: write the plain path", s)
		}
	}
	return Webhook{URL: s, Host: canon, Port: port, Path: path}, ""
}

func (p *parser) jobs(n *yaml.Node, f *File, webhooksNode *yaml.Node) {
	fields, ok := p.mapping(n, "jobs", nil)
	if !ok {
		return
	}
	for _, fl := range fields {
		name, ok := p.slug(fl.key, "job name")
		if !ok {
			continue
		}
		what := "job " + name
		job := &Job{Name: name, Mode: ModeEnforce, Pos: p.pos(fl.key)}
		jf, ok := p.mapping(fl.val, what, jobFields)
		if !ok {
			continue
		}
		f.Jobs[name] = job
		p.require(fl.val, what, jf, "class")
		var allowNode *yaml.Node
		for _, j := range jf {
			switch j.key.Value {
			case "class":
				if s, ok := p.str(j.val, "class"); ok {
					switch Class(s) {
					case ClassPlatform, ClassUser:
						job.Class = Class(s)
					default:
						p.errorf(j.val, "class %q is not a class: use platform or user", s)
					}
				}
			case "mode":
				if s, ok := p.str(j.val, "mode"); ok {
					switch Mode(s) {
					case ModeEnforce, ModeReport:
						job.Mode = Mode(s)
					default:
						p.errorf(j.val, "mode %q is not a mode: use enforce (the default) or report", s)
					}
				}
			case "allow":
				allowNode = j.val
			case "webhooks":
				if b, ok := p.boolean(j.val, "webhooks"); ok {
					job.Webhooks = b
					if b && len(f.Webhooks) == 0 && webhooksNodeEmpty(webhooksNode) {
						p.errorf(j.val, "%s sets webhooks: true but the file lists no webhooks: add the URLs under the top-level webhooks or remove this line", what)
					}
				}
			}
		}
		if allowNode != nil {
			job.Allow = p.allow(allowNode, f, job)
		}
	}
}

// webhooksNodeEmpty reports whether the file's webhooks list is absent or
// empty (as opposed to present with errors, reported already).
func webhooksNodeEmpty(n *yaml.Node) bool {
	return n == nil || n.Kind != yaml.SequenceNode || len(n.Content) == 0
}

func (p *parser) allow(n *yaml.Node, f *File, job *Job) []string {
	what := "job " + job.Name
	if n.Kind != yaml.SequenceNode {
		p.errorf(n, "allow of %s must be a list of endpoint set names, as in [platform_storage], got %s", what, describe(n))
		return nil
	}
	var out []string
	for _, an := range n.Content {
		name, ok := p.str(an, "endpoint set name")
		if !ok {
			continue
		}
		set, defined := f.EndpointSets[name]
		switch {
		case !defined:
			p.errorf(an, "%s allows undefined endpoint set %q: define it under endpoint_sets or remove it%s", what, name, known(f))
			continue
		case slices.Contains(out, name):
			p.errorf(an, "%s allows endpoint set %q twice: remove one", what, name)
			continue
		case set.PlatformOnly && job.Class == ClassUser:
			p.errorf(an, "user-class %s may not use platform_only endpoint set %q (seeds/000: user jobs get no raw RPC access): remove it, or make the job class platform after review", what, name)
			continue
		}
		out = append(out, name)
	}
	return out
}

// known lists the defined endpoint sets for "undefined set" messages.
func known(f *File) string {
	if len(f.EndpointSets) == 0 {
		return " (the file defines no endpoint sets)"
	}
	names := make([]string, 0, len(f.EndpointSets))
	for n := range f.EndpointSets {
		names = append(names, n)
	}
	slices.Sort(names)
	return " (defined: " + strings.Join(names, ", ") + ")"
}

// didYouMean suggests the allowed field closest to a misspelt one.
func didYouMean(got string, allowed []string) string {
	best, bestD := "", 3 // suggest only within two edits
	for _, a := range allowed {
		if d := editDistance(got, a); d < bestD {
			best, bestD = a, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// editDistance is the Levenshtein distance of two short ASCII strings.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

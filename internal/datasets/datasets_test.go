package datasets

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestParseLocation(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Location
		wantErr string // substring; empty means success
	}{
		{name: "s3 uri", in: "s3://trace-data/acme/blocks/", want: Location{"trace-data", "acme/blocks/"}},
		{name: "arn normalised", in: "arn:aws:s3:::trace-data/acme/blocks/", want: Location{"trace-data", "acme/blocks/"}},
		{name: "hive partition", in: "s3://trace-data/acme/t/date=2026-01-01/", want: Location{"trace-data", "acme/t/date=2026-01-01/"}},
		{name: "dotted bucket", in: "s3://trace.data/acme/", want: Location{"trace.data", "acme/"}},
		{name: "empty", in: "", wantErr: "empty location"},
		{name: "http scheme", in: "https://trace-data.s3.amazonaws.com/acme/", wantErr: "neither s3://"},
		{name: "uppercase scheme", in: "S3://trace-data/acme/", wantErr: "neither s3://"},
		{name: "arn other partition", in: "arn:aws-cn:s3:::trace-data/acme/", wantErr: "aws partition"},
		{name: "arn with region", in: "arn:aws:s3:us-east-1::trace-data/acme/", wantErr: "aws partition"},
		{name: "arn with account", in: "arn:aws:s3::123456789012:trace-data/acme/", wantErr: "aws partition"},
		{name: "arn of other service", in: "arn:aws:iam:::role/x/", wantErr: "aws partition"},
		{name: "whole bucket", in: "s3://trace-data/", wantErr: "whole bucket"},
		{name: "bucket only no slash", in: "s3://trace-data", wantErr: "whole bucket"},
		{name: "no trailing slash", in: "s3://trace-data/acme/blocks", wantErr: "must end with"},
		{name: "star", in: "s3://trace-data/acme/*/", wantErr: "wildcard '*'"},
		{name: "question mark", in: "s3://trace-data/acme/b?/", wantErr: "wildcard '?'"},
		{name: "policy variable", in: "s3://trace-data/${aws:username}/", wantErr: "policy variables"},
		{name: "dotdot", in: "s3://trace-data/acme/../other/", wantErr: `segment ".."`},
		{name: "dot", in: "s3://trace-data/acme/./x/", wantErr: `segment "."`},
		{name: "empty segment", in: "s3://trace-data/acme//x/", wantErr: "empty segment"},
		{name: "leading slash", in: "s3://trace-data//acme/", wantErr: "empty segment"},
		{name: "quote", in: `s3://trace-data/acme"/`, wantErr: "character '\"'"},
		{name: "backslash", in: `s3://trace-data/acme\/`, wantErr: `character '\\'`},
		{name: "space", in: "s3://trace-data/ac me/", wantErr: "character ' '"},
		{name: "percent", in: "s3://trace-data/%2e%2e/", wantErr: "character '%'"},
		{name: "newline", in: "s3://trace-data/acme\n/", wantErr: "control or non-ASCII"},
		{name: "nul", in: "s3://trace-data/acme\x00/", wantErr: "control or non-ASCII"},
		{name: "unicode", in: "s3://trace-data/acmé/", wantErr: "control or non-ASCII"},
		{name: "fullwidth star", in: "s3://trace-data/acme/＊/", wantErr: "control or non-ASCII"},
		{name: "too long", in: "s3://trace-data/" + strings.Repeat("a/", 300), wantErr: "at most 512"},
		{name: "bucket uppercase", in: "s3://Trace-Data/acme/", wantErr: "lowercase letters"},
		{name: "bucket underscore", in: "s3://trace_data/acme/", wantErr: "lowercase letters"},
		{name: "bucket short", in: "s3://ab/acme/", wantErr: "3 to 63"},
		{name: "bucket long", in: "s3://" + strings.Repeat("a", 64) + "/acme/", wantErr: "3 to 63"},
		{name: "bucket ip", in: "s3://192.168.5.4/acme/", wantErr: "IP address"},
		{name: "bucket dots", in: "s3://trace..data/acme/", wantErr: "adjacent periods"},
		{name: "bucket dash end", in: "s3://trace-/acme/", wantErr: "begin and end"},
		{name: "bucket xn prefix", in: "s3://xn--trace/acme/", wantErr: "reserved prefix"},
		{name: "bucket alias suffix", in: "s3://trace-s3alias/acme/", wantErr: "reserved suffix"},
		{name: "bucket star", in: "s3://trace-*/acme/", wantErr: "lowercase letters"},
		{name: "empty bucket", in: "s3:///acme/", wantErr: "3 to 63"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseLocation(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseLocation(%q): got error %v, want one containing %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseLocation(%q): got error %v, want %+v", tt.in, err, tt.want)
			}
			if got != tt.want {
				t.Fatalf("ParseLocation(%q): got %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestDecode(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		wantErr   string
		wantField string
	}{
		{name: "ok", in: `{"inputs":[{"location":"s3://trace-data/acme/blocks/","pii":false}],"outputs":[{"location":"s3://trace-data/acme/out/"}]}`},
		{name: "empty object", in: `{}`},
		{name: "unknown top field", in: `{"inputs":[],"actions":["s3:*"]}`, wantErr: `unknown field "actions"`},
		{name: "unknown dataset field", in: `{"inputs":[{"location":"s3://trace-data/acme/x/","resource":"*"}]}`, wantErr: `unknown field "resource"`},
		{name: "duplicate key", in: `{"inputs":[],"inputs":[{"location":"s3://trace-data/other/x/"}]}`, wantErr: "appears twice", wantField: "inputs"},
		{name: "duplicate nested key", in: `{"inputs":[{"location":"s3://trace-data/acme/x/","location":"s3://trace-data/other/x/"}]}`, wantErr: "appears twice", wantField: "location"},
		{name: "trailing data", in: `{} {}`, wantErr: "trailing data"},
		{name: "wrong type", in: `{"inputs":{"location":"s3://trace-data/acme/x/"}}`, wantErr: "invalid JSON"},
		{name: "pii as string", in: `{"inputs":[{"location":"s3://trace-data/acme/x/","pii":"yes"}]}`, wantErr: "invalid JSON"},
		{name: "not json", in: `inputs: []`, wantErr: "invalid JSON"},
		{name: "bad location names field", in: `{"outputs":[{"location":"s3://trace-data/acme/x/"},{"location":"s3://trace-data/acme/*"}]}`, wantErr: "wildcard", wantField: "outputs[1].location"},
		{name: "duplicate dataset", in: `{"inputs":[{"location":"s3://trace-data/acme/x/"},{"location":"arn:aws:s3:::trace-data/acme/x/"}]}`, wantErr: "declared twice", wantField: "inputs[1].location"},
		{name: "too many inputs", in: manyInputs(MaxInputs + 1), wantErr: "at most 32", wantField: "inputs"},
		{name: "max inputs", in: manyInputs(MaxInputs)},
		{name: "too large", in: `{"inputs":[],"outputs":[]` + strings.Repeat(" ", MaxPayloadBytes) + `}`, wantErr: "larger than 65536 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode(strings.NewReader(tt.in))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Decode: got error %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Decode: got error %v, want one containing %q", err, tt.wantErr)
			}
			var de *Error
			if !errors.As(err, &de) {
				t.Fatalf("Decode: got error of type %T, want *Error", err)
			}
			if de.Field != tt.wantField {
				t.Fatalf("Decode: got field %q, want %q", de.Field, tt.wantField)
			}
		})
	}
}

func manyInputs(n int) string {
	var b strings.Builder
	b.WriteString(`{"inputs":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"location":"s3://trace-data/acme/d%d/"}`, i)
	}
	b.WriteString(`]}`)
	return b.String()
}

func TestValidateConfinement(t *testing.T) {
	conf := Confinement{RootTemplates: []string{"s3://trace-data/{org}/", "s3://{org}-scratch/tmp/"}}
	decl := func(in, out string) Declaration {
		d := Declaration{}
		if in != "" {
			d.Inputs = []Dataset{{Location: in}}
		}
		if out != "" {
			d.Outputs = []Dataset{{Location: out}}
		}
		return d
	}
	tests := []struct {
		name     string
		org      string
		conf     Confinement
		decl     Declaration
		wantErr  string
		confined bool // want errors.Is(err, ErrNotConfined)
	}{
		{name: "own prefix", org: "acme", conf: conf, decl: decl("s3://trace-data/acme/blocks/", "s3://acme-scratch/tmp/run1/")},
		{name: "the root itself", org: "acme", conf: conf, decl: decl("s3://trace-data/acme/", "")},
		{name: "no datasets", org: "acme", conf: Confinement{}, decl: Declaration{}},
		{name: "other org", org: "acme", conf: conf, decl: decl("s3://trace-data/globex/blocks/", ""), wantErr: "outside", confined: true},
		{name: "org name prefix of another", org: "acme", conf: conf, decl: decl("s3://trace-data/acme-evil/blocks/", ""), wantErr: "outside", confined: true},
		{name: "output elsewhere", org: "acme", conf: conf, decl: decl("", "s3://exfil-bucket/acme/"), wantErr: "outputs[0].location", confined: true},
		{name: "other org scratch bucket", org: "acme", conf: conf, decl: decl("s3://globex-scratch/tmp/", ""), wantErr: "outside", confined: true},
		{name: "no roots configured", org: "acme", conf: Confinement{}, decl: decl("s3://trace-data/acme/x/", ""), wantErr: "outside", confined: true},
		{name: "bad org", org: "Acme/..", conf: conf, decl: Declaration{}, wantErr: "not an org slug"},
		{name: "shared root refused", org: "acme", conf: Confinement{RootTemplates: []string{"s3://trace-data/shared/"}}, decl: Declaration{}, wantErr: "does not contain {org}"},
		{name: "org makes bad bucket", org: "a_b", conf: Confinement{RootTemplates: []string{"s3://{org}-data/x/"}}, decl: Declaration{}, wantErr: "root_templates[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.decl.Validate(tt.org, tt.conf)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: got %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate: got %v, want an error containing %q", err, tt.wantErr)
			}
			if got := errors.Is(err, ErrNotConfined); got != tt.confined {
				t.Fatalf("errors.Is(err, ErrNotConfined): got %v, want %v (err %v)", got, tt.confined, err)
			}
		})
	}
}

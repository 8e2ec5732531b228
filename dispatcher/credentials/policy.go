package credentials

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/cordon-dev/cordon/internal/datasets"
)

// MaxPolicyBytes is the STS limit on an inline session policy's plaintext
// ("The plaintext that you use for both inline and managed session policies
// can't exceed 2,048 characters").
const MaxPolicyBytes = 2048

// ErrNoDatasets is returned for a declaration without any dataset: there
// is nothing to grant, so no credentials are minted and none are served.
var ErrNoDatasets = errors.New("declaration has no datasets")

// ErrPolicyTooLarge is wrapped by SessionPolicy's error when the policy
// would exceed MaxPolicyBytes.
var ErrPolicyTooLarge = errors.New("session policy too large")

// Actions a session policy may grant; nothing else ever appears in one.
const (
	actionGet  = "s3:GetObject"
	actionList = "s3:ListBucket"
	actionPut  = "s3:PutObject"
)

type policyDocument struct {
	Version   string      `json:"Version"`
	Statement []statement `json:"Statement"`
}

type statement struct {
	Sid       string                         `json:"Sid"`
	Effect    string                         `json:"Effect"`
	Action    string                         `json:"Action"`
	Resource  []string                       `json:"Resource"`
	Condition map[string]map[string][]string `json:"Condition,omitempty"`
}

// SessionPolicy returns the inline STS session policy for decl, compact
// JSON: s3:GetObject on every input prefix, s3:ListBucket on each input
// bucket with s3:prefix limited to its input prefixes, s3:PutObject on every
// output prefix, and nothing else. It is a pure function: the same
// declaration always gives the same bytes (locations are sorted, and a
// prefix inside another declared prefix of the same kind is dropped).
//
// It re-checks every location with datasets.ParseLocation, so a
// declaration that skipped validation still cannot inject a wildcard, a
// policy variable or another bucket. It does not apply org confinement or
// PII grants: Minter does that before calling it.
func SessionPolicy(decl datasets.Declaration) ([]byte, error) {
	inputs, outputs, err := decl.Parsed()
	if err != nil {
		return nil, fmt.Errorf("session policy: %w", err)
	}
	in, out := minimal(inputs), minimal(outputs)
	if len(in) == 0 && len(out) == 0 {
		return nil, fmt.Errorf("session policy: %w", ErrNoDatasets)
	}
	doc := policyDocument{Version: "2012-10-17"}
	if len(in) > 0 {
		doc.Statement = append(doc.Statement, statement{
			Sid: "ReadInputs", Effect: "Allow", Action: actionGet, Resource: objectARNs(in),
		})
		// One ListBucket statement per bucket, so a bucket's prefixes are
		// never listable in another bucket.
		var buckets []string
		for _, l := range in {
			if !slices.Contains(buckets, l.Bucket) {
				buckets = append(buckets, l.Bucket)
			}
		}
		for i, b := range buckets {
			var prefixes []string
			for _, l := range in {
				if l.Bucket == b {
					prefixes = append(prefixes, l.Prefix+"*")
				}
			}
			doc.Statement = append(doc.Statement, statement{
				Sid: "ListInputs" + strconv.Itoa(i+1), Effect: "Allow", Action: actionList,
				Resource:  []string{"arn:aws:s3:::" + b},
				Condition: map[string]map[string][]string{"StringLike": {"s3:prefix": prefixes}},
			})
		}
	}
	if len(out) > 0 {
		doc.Statement = append(doc.Statement, statement{
			Sid: "WriteOutputs", Effect: "Allow", Action: actionPut, Resource: objectARNs(out),
		})
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(doc); err != nil {
		return nil, fmt.Errorf("session policy: encode: %w", err)
	}
	b := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	if len(b) > MaxPolicyBytes {
		return nil, fmt.Errorf("session policy: %w: %d bytes for %d inputs and %d outputs, STS allows %d; declare fewer or broader prefixes",
			ErrPolicyTooLarge, len(b), len(in), len(out), MaxPolicyBytes)
	}
	return b, nil
}

// minimal sorts locations and drops any that another one contains.
func minimal(ds []datasets.ParsedDataset) []datasets.Location {
	locs := make([]datasets.Location, 0, len(ds))
	for _, d := range ds {
		locs = append(locs, d.Location)
	}
	slices.SortFunc(locs, func(a, b datasets.Location) int {
		if c := strings.Compare(a.Bucket, b.Bucket); c != 0 {
			return c
		}
		return strings.Compare(a.Prefix, b.Prefix)
	})
	out := locs[:0]
	for _, l := range locs {
		// Sorted order puts a containing prefix before what it contains.
		if len(out) > 0 && out[len(out)-1].Contains(l) {
			continue
		}
		out = append(out, l)
	}
	return out
}

func objectARNs(locs []datasets.Location) []string {
	arns := make([]string, len(locs))
	for i, l := range locs {
		arns[i] = "arn:aws:s3:::" + l.Bucket + "/" + l.Prefix + "*"
	}
	return arns
}

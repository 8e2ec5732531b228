package jobrun

import (
	"io"

	"github.com/cordon-dev/cordon/sidecar/scrub"
	"github.com/cordon-dev/cordon/sidecar/secrets"
)

var _ Stream = (*scrub.Writer)(nil)

// ScrubberFor compiles sidecar/scrub for the job's secrets: every value and
// its encodings, plus the well-known token rules and email masking. An
// empty value is skipped (there is nothing to leak); a value shorter than
// scrub.MinSecretLen is refused by scrub.New, so the job does not start
// rather than run with a secret that cannot be redacted (fail closed).
func ScrubberFor(vars []secrets.Var) (Scrubber, error) {
	ss := make([]scrub.Secret, 0, len(vars))
	for _, v := range vars {
		if v.Value == "" {
			continue
		}
		ss = append(ss, scrub.Secret{Name: v.Env, Value: v.Value})
	}
	s, err := scrub.New(scrub.Config{Secrets: ss})
	if err != nil {
		return nil, err
	}
	return scrubAdapter{s}, nil
}

type scrubAdapter struct{ s *scrub.Scrubber }

func (a scrubAdapter) NewStream(dst io.Writer) Stream { return a.s.NewWriter(dst) }

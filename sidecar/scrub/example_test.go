package scrub_test

import (
	"fmt"
	"os"

	"github.com/cordon-dev/cordon/sidecar/scrub"
)

func Example() {
	s, err := scrub.New(scrub.Config{Secrets: []scrub.Secret{{Name: "MONAD_RPC_KEY", Value: "k3y-0f-the-rpc"}}})
	if err != nil {
		fmt.Println(err)
		return
	}
	w := s.NewWriter(os.Stdout)
	defer w.Close()
	fmt.Fprintln(w, `rpc key k3y-0f-the-rpc, base64 azN5LTBmLXRoZS1ycGM=`)
	fmt.Fprintln(w, `{"api_key": "sk_live_abc123xyz"} from user@example.com`)
	// Output:
	// rpc key [REDACTED:MONAD_RPC_KEY], base64 [REDACTED:MONAD_RPC_KEY]
	// {"api_key": "sk_live_***REDACTED***"} from user***@example.com
}

package jobrun

import (
	"testing"

	"go.uber.org/goleak"
)

// Every goroutine Run starts (pumps, waiter, timers) must be gone when it
// returns. os/signal's dispatcher lives for the process once Notify is used.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("os/signal.signal_recv"), goleak.IgnoreTopFunction("os/signal.loop"))
}

package loadgen

import (
	"os"
	"testing"
)

func TestParseVmRSS(t *testing.T) {
	tests := []struct {
		name    string
		status  string
		want    int64
		wantErr bool
	}{
		{"normal", "Name:\tx\nVmPeak:\t  10 kB\nVmRSS:\t    1234 kB\nThreads:\t1\n", 1234 << 10, false},
		{"no line", "Name:\tkthreadd\nState:\tS\n", 0, true},
		{"bad unit", "VmRSS:\t 12 MB\n", 0, true},
		{"bad number", "VmRSS:\t 1x2 kB\n", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseVmRSS([]byte(tt.status))
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("got %d, %v; want %d, error %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestTreeRSSOfThisProcess(t *testing.T) {
	got, err := TreeRSS(os.Getpid())
	if err != nil {
		t.Fatalf("TreeRSS(self): %v", err)
	}
	if got < 1<<20 {
		t.Errorf("got %d bytes resident for a running Go test, want at least 1 MiB", got)
	}
	if _, err := TreeRSS(1 << 30); err == nil {
		t.Errorf("TreeRSS of a pid that cannot exist: got no error, want one")
	}
}

package cli

import (
	"os"
	"runtime/debug"
	"testing"
)

func TestTuneGC(t *testing.T) {
	old := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(old) })

	t.Setenv("GOGC", "150") // the operator's choice wins
	debug.SetGCPercent(150)
	if got := TuneGC(); got != 150 {
		t.Errorf("with GOGC set: TuneGC() = %d, want 150", got)
	}
	if got := debug.SetGCPercent(150); got != 150 {
		t.Errorf("with GOGC set: GC percent became %d, want 150 (unchanged)", got)
	}

	os.Unsetenv("GOGC") // t.Setenv restores it afterwards
	if got := TuneGC(); got != GCPercent {
		t.Errorf("without GOGC: TuneGC() = %d, want %d", got, GCPercent)
	}
	if got := debug.SetGCPercent(100); got != GCPercent {
		t.Errorf("without GOGC: GC percent is %d, want %d", got, GCPercent)
	}
}

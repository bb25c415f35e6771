package failpoint

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestDelay(t *testing.T) {
	file := filepath.Join(t.TempDir(), "failpoints")
	if d := Delay(file, AfterTakeover); d != 0 {
		t.Fatalf("no file: %v", d)
	}
	os.WriteFile(file, []byte("other 1s\nafter-takeover 250ms\nbroken\nneg -1s\n"), 0o600)
	if d := Delay(file, AfterTakeover); d != 250*time.Millisecond {
		t.Fatalf("armed: %v", d)
	}
	if d := Delay(file, "neg"); d != 0 {
		t.Fatalf("negative armed: %v", d)
	}
	if d := Delay("", AfterTakeover); d != 0 {
		t.Fatalf("no file name: %v", d)
	}
}

package qemu

import (
	"context"
	"os"
	"testing"
)

func TestChooseAccel(t *testing.T) {
	ctx := context.Background()
	if a, _, err := ChooseAccel(ctx, "tcg", "", "", t.TempDir()); err != nil || a != "tcg" {
		t.Fatalf("tcg: %s %v", a, err)
	}
	if _, _, err := ChooseAccel(ctx, "hvf", "", "", t.TempDir()); err == nil {
		t.Fatal("unknown accelerator accepted")
	}
	_, kvmErr := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if kvmErr != nil {
		// Without a usable /dev/kvm: kvm is refused, auto falls back to tcg.
		if _, _, err := ChooseAccel(ctx, "kvm", "", "", t.TempDir()); err == nil {
			t.Fatal("kvm accepted without /dev/kvm")
		}
		if a, why, err := ChooseAccel(ctx, "auto", "", "", t.TempDir()); err != nil || a != "tcg" || why == "" {
			t.Fatalf("auto: %s %q %v", a, why, err)
		}
		return
	}
	// With /dev/kvm but no image to prove it boots, auto does not trust it.
	if a, _, err := ChooseAccel(ctx, "auto", "", "", t.TempDir()); err != nil || a != "tcg" {
		t.Fatalf("auto without probe image: %s %v", a, err)
	}
}

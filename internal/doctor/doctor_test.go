package doctor

import (
	"errors"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Each check's judgement of what it found: too old or missing fails,
// slower or riskier warns, with a fix; what is right passes.
func TestJudgements(t *testing.T) {
	for _, c := range []struct {
		r    Result
		want Status
		fix  string
	}{
		{qemuVersion("10.0.2", nil), OK, ""},
		{qemuVersion("7.2.0", nil), Fail, "bookworm-backports"},
		{qemuVersion("", errors.New("qemu-system-x86_64 not found")), Fail, "install qemu-system-x86"},
		{accelerator("kvm", "a probe guest booted under KVM", nil), OK, ""},
		{accelerator("tcg", "/dev/kvm unusable: no such file", nil), Warn, "kvm_intel"},
		{accelerator("tcg", "a probe guest did not boot under KVM: no ready marker", nil), Warn, "nested"},
		{netDevices(errors.New("vxlan device: operation not supported")), Fail, "vxlan"},
		{netDevices(nil), OK, ""},
		{clock(unix.TIME_OK, 0, nil), OK, ""},
		{clock(unix.TIME_ERROR, unix.STA_UNSYNC, nil), Warn, "NTP"},
		{port(7443, nil, false), OK, ""},
		{port(7443, errors.New("address already in use"), true), OK, ""},
		{port(7443, errors.New("address already in use"), false), Fail, "--listen"},
		{memory(512 << 20), Warn, "1 GiB"},
		{memory(8 << 30), OK, ""},
		{disk("/var/lib/ferry", 2<<30), Warn, "5 GiB"},
		{disk("/var/lib/ferry", 50<<30), OK, ""},
	} {
		if c.r.Status != c.want || !strings.Contains(c.r.Fix, c.fix) || (c.want == OK && c.r.Fix != "") {
			t.Errorf("%s: %s %q (fix %q), want %s with a fix naming %q", c.r.Check, c.r.Status, c.r.Found, c.r.Fix, c.want, c.fix)
		}
	}
	if !Failed([]Result{{Status: OK}, {Status: Fail}}) || Failed([]Result{{Status: OK}, {Status: Warn}}) {
		t.Error("Failed must report a failed check, and only that")
	}
}

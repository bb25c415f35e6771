package qemu

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// DisableTHP turns transparent huge pages off for this process and every
// QEMU it starts from now on (the setting is inherited across fork and
// exec). QEMU asks for huge pages on guest RAM; on a migration target every
// page that arrives then makes the kernel clear a whole 2 MiB page, and the
// target's one incoming thread spends the move clearing memory (measured on
// this project's machines, TCG, 256 MiB guest: plain QMP migrate 561 ms with
// huge pages, 382 ms without; docs/BENCHMARKS.md). A TCG guest gains little
// from host huge pages, since its memory accesses go through TCG's own
// software TLB; a KVM guest gains a lot, so Ferry leaves them on there.
func DisableTHP() error {
	if err := unix.Prctl(unix.PR_SET_THP_DISABLE, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("disabling transparent huge pages for guests: %w", err)
	}
	return nil
}

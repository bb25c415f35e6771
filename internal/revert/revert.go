// Package revert undoes a multi-step setup when a later step fails: each
// step registers how to undo itself, and unless the setup reaches Success the
// undo functions run in reverse order. (After Incus' shared/revert.)
package revert

// Reverter collects undo functions.
type Reverter struct {
	fns  []func()
	done bool
}

// New returns an empty Reverter; call `defer r.Fail()` right after.
func New() *Reverter { return &Reverter{} }

// Add registers an undo function.
func (r *Reverter) Add(f func()) { r.fns = append(r.fns, f) }

// Fail runs the undo functions in reverse order unless Success was called.
func (r *Reverter) Fail() {
	if r.done {
		return
	}
	r.done = true
	for i := len(r.fns) - 1; i >= 0; i-- {
		r.fns[i]()
	}
}

// Success keeps what was set up.
func (r *Reverter) Success() { r.done = true }

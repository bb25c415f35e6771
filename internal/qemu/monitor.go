package qemu

import "context"

// Monitor is a QEMU's QMP monitor as Ferry uses it: commands, asynchronous
// events, and the version QEMU greeted with. *Client implements it over a
// socket; the agent's tests implement it with a simulated QEMU.
type Monitor interface {
	// Execute runs a command and decodes its return value into out.
	Execute(ctx context.Context, cmd string, args any, out any) error
	// Events is closed when the monitor's connection ends.
	Events() <-chan Event
	Version() Version
	Close() error
}

var _ Monitor = (*Client)(nil)

// QMP is the commands Ferry sends, over any Monitor.
type QMP struct{ Monitor }

// Status is the reply of query-status.
type Status struct {
	Running bool   `json:"running"`
	Status  string `json:"status"`
}

// QueryStatus returns the VM's run state.
func (c QMP) QueryStatus(ctx context.Context) (Status, error) {
	var s Status
	err := c.Execute(ctx, "query-status", nil, &s)
	return s, err
}

// DialQMP connects to a QMP socket (Dial) for the commands of QMP.
func DialQMP(ctx context.Context, path string) (QMP, error) {
	c, err := Dial(ctx, path)
	if err != nil {
		return QMP{}, err
	}
	return QMP{Monitor: c}, nil
}

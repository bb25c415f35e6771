package agent

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/ferryvm/ferry/api"
)

// probeLoop asks every running guest for its health over HTTP and reports
// changes (healthy or not, a new boot id) in the VM's status.
func (a *Agent) probeLoop(ctx context.Context) {
	hc := &http.Client{Timeout: time.Second}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	lastWrite := map[string]time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.mu.Lock()
		var ins []*instance
		for _, in := range a.vms {
			ins = append(ins, in)
		}
		a.mu.Unlock()
		for _, in := range ins {
			if !in.alive() || in.rec.Endpoint == "" {
				continue
			}
			g := probe(ctx, hc, in.rec.Endpoint)
			in.mu.Lock()
			old := in.guest
			if g.Healthy || old == nil {
				in.guest = g
			} else {
				// Keep what we last knew of the guest, marked unhealthy.
				cp := *old
				cp.Healthy = false
				in.guest = &cp
			}
			cur := in.guest
			in.mu.Unlock()
			changed := old == nil || old.Healthy != cur.Healthy || old.BootID != cur.BootID
			if changed || time.Since(lastWrite[in.name]) > 15*time.Second {
				if vm, err := a.st.GetVM(ctx, in.name); err == nil && vm.Status.Phase == api.PhaseRunning && vm.Status.PID == in.rec.PID && in.alive() {
					a.putStatus(ctx, in.name, a.runningStatus(in))
					lastWrite[in.name] = time.Now()
				}
			}
		}
	}
}

func probe(ctx context.Context, hc *http.Client, endpoint string) *api.Guest {
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+endpoint+"/health", nil)
	resp, err := hc.Do(req)
	if err != nil {
		return &api.Guest{Healthy: false}
	}
	defer resp.Body.Close()
	var h struct {
		Status  string  `json:"status"`
		BootID  string  `json:"boot_id"`
		UptimeS float64 `json:"uptime_s"`
	}
	if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&h) != nil || h.Status != "ok" {
		return &api.Guest{Healthy: false}
	}
	return &api.Guest{Healthy: true, BootID: h.BootID, UptimeS: h.UptimeS, LastSeen: time.Now().UTC()}
}

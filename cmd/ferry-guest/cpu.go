package main

import (
	"net/http"
	"strconv"
	"sync"
	"time"
)

// burner keeps the guest's CPU busy for a share of the time: the load
// patterns of the predictive benchmark (a busy afternoon, a quiet night)
// are driven through it.
type burner struct {
	mu    sync.Mutex
	share float64
	stop  chan struct{}
}

// burnSlice is the period the share is kept over.
const burnSlice = 20 * time.Millisecond

func (b *burner) set(share float64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stop != nil {
		close(b.stop)
		b.stop = nil
	}
	b.share = share
	if share == 0 {
		return
	}
	stop := make(chan struct{})
	b.stop = stop
	busy := time.Duration(share * float64(burnSlice))
	go func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			start := time.Now()
			for time.Since(start) < busy {
			}
			time.Sleep(burnSlice - busy)
		}
	}()
}

// setCPU answers POST /cpu?share=S: keep the CPU busy S of the time (0 to
// 1; 0 stops).
func (g *guest) setCPU(w http.ResponseWriter, r *http.Request) {
	share, err := strconv.ParseFloat(r.URL.Query().Get("share"), 64)
	if err != nil || share < 0 || share > 1 {
		http.Error(w, "share must be a number from 0 to 1", http.StatusBadRequest)
		return
	}
	g.cpu.set(share)
	writeJSON(w, map[string]float64{"share": share})
}

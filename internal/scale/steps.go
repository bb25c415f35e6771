package scale

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/errdefs"
	"github.com/ferryvm/ferry/internal/simcluster"
	"github.com/ferryvm/ferry/internal/store"
	"github.com/ferryvm/ferry/internal/wait"
	"github.com/google/uuid"
)

// guest is one guest the run created.
type guest struct{ name, uuid string }

// parallel runs f for 0..n-1 on width goroutines; the first error wins.
func parallel(n, width int, f func(i int) error) error {
	var (
		mu    sync.Mutex
		first error
		wg    sync.WaitGroup
	)
	next := make(chan int)
	for w := 0; w < width; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := f(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	return first
}

// startHosts starts every host's agent and waits until all registered. An
// agent whose first connection etcd does not answer in time (a loaded
// etcd) is started again, for up to startRetryFor, as systemd restarts a
// ferry agent that exits on it; it returns how many such restarts there were.
func startHosts(ctx context.Context, c *simcluster.Cluster, st *store.Store, names []string, say func(string)) (int, error) {
	var started, retries atomic.Int64
	if err := parallel(len(names), 8, func(i int) error {
		var err error
		for end := time.Now().Add(startRetryFor); ; {
			if _, err = c.Start(ctx, names[i]); !errors.Is(err, errdefs.ErrUnavailable) || time.Now().After(end) {
				break
			}
			retries.Add(1)
			say(fmt.Sprintf("%s: %v; starting it again", names[i], err))
		}
		if n := started.Add(1); n%100 == 0 {
			say(fmt.Sprintf("%d hosts started", n))
		}
		return err
	}); err != nil {
		return int(retries.Load()), err
	}
	return int(retries.Load()), wait.Until(ctx, 500*time.Millisecond, func(context.Context) (bool, error) {
		nodes, err := st.ListNodes(ctx)
		return len(nodes) == len(names), fmt.Errorf("%d of %d hosts registered (%v)", len(nodes), len(names), err)
	})
}

// startRetryFor bounds how long one agent is started again.
const startRetryFor = 5 * time.Minute

// populate creates the guests through the store, placed on their hosts:
// per guest on the victim, per host on the others.
func populate(ctx context.Context, st *store.Store, names []string, victim string, per, onVictim int) (map[string][]guest, error) {
	type job struct {
		host string
		g    guest
		ha   bool
	}
	var jobs []job
	out := map[string][]guest{}
	for _, h := range names {
		n, ha := per, false
		if h == victim {
			n, ha = onVictim, true
		}
		for i := 0; i < n; i++ {
			g := guest{name: fmt.Sprintf("g-%s-%02d", h, i), uuid: uuid.NewString()}
			jobs = append(jobs, job{h, g, ha})
			out[h] = append(out[h], g)
		}
	}
	err := parallel(len(jobs), 16, func(i int) error {
		j := jobs[i]
		spec := &api.VMSpec{Name: j.g.name, UUID: j.g.uuid, MemoryMiB: 256, CPUs: 1, DiskMiB: 64,
			Image: api.ImageTiny, Power: api.PowerRunning, StartSeq: 1, HA: j.ha}
		if err := st.CreateVM(ctx, spec); err != nil {
			return err
		}
		if ok, err := st.Place(ctx, j.g.name, j.host, store.Guard{}); err != nil || !ok {
			return fmt.Errorf("placing %s: %v %v", j.g.name, ok, err)
		}
		return nil
	})
	return out, err
}

// waitRunning waits until n simulated guests run.
func waitRunning(ctx context.Context, c *simcluster.Cluster, n int, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	return wait.Until(ctx, time.Second, func(context.Context) (bool, error) {
		running := 0
		for _, p := range c.World.All() {
			if p.Running() {
				running++
			}
		}
		return running >= n, fmt.Errorf("%d of %d guests run", running, n)
	})
}

// measureIdle reads CPU, the write rate and the leader's rounds over the
// idle window.
func measureIdle(ctx context.Context, st *store.Store, cfg Config, res *Result, rs *rounds) error {
	s0, err := st.Stats(ctx)
	if err != nil {
		return err
	}
	self0, etcd0 := selfCPU(), PIDsCPU(cfg.EtcdPIDs)
	rs.take()
	t0 := time.Now()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(cfg.Idle):
	}
	el := time.Since(t0)
	s1, err := st.Stats(ctx)
	if err != nil {
		return err
	}
	res.WritesPerSec = float64(s1.Revision-s0.Revision) / el.Seconds()
	res.AgentCPUPercent = 100 * (selfCPU() - self0).Seconds() / el.Seconds() / float64(cfg.Hosts)
	if res.AgentCPUPercent > 0 {
		res.AgentsPer2Cores = int(200 / res.AgentCPUPercent)
	}
	if len(cfg.EtcdPIDs) > 0 {
		res.EtcdCPUPercent = 100 * (PIDsCPU(cfg.EtcdPIDs) - etcd0).Seconds() / el.Seconds()
	}
	res.LeaderRound = summarise(rs.take())
	return nil
}

// measureAPI times single calls through the API, one at a time.
func measureAPI(ctx context.Context, c *simcluster.Cluster, st *store.Store, cfg Config, res *Result, names []string, victim string) error {
	cl, err := c.ServeAPI(ctx)
	if err != nil {
		return err
	}
	timed := func(kind string, n int, call func(i int) error) error {
		var ds []time.Duration
		for i := 0; i < n; i++ {
			t := time.Now()
			if err := call(i); err != nil {
				return fmt.Errorf("%s %d: %w", kind, i, err)
			}
			ds = append(ds, time.Since(t))
		}
		res.API[kind] = summarise(ds)
		return nil
	}
	pick := func(i int) string { // a guest on a host that is not the victim
		h := names[(i*7919)%(len(names)-1)]
		return fmt.Sprintf("g-%s-%02d", h, rand.IntN(cfg.GuestsPerHost))
	}
	if err := timed("get", cfg.Samples, func(i int) error { _, err := cl.GetVM(ctx, pick(i)); return err }); err != nil {
		return err
	}
	if err := timed("list", min(cfg.Samples, 20), func(int) error { _, err := cl.ListVMs(ctx); return err }); err != nil {
		return err
	}
	start := true
	if err := timed("create", cfg.Samples, func(i int) error {
		_, err := cl.CreateVM(ctx, api.VMCreateRequest{Name: fmt.Sprintf("api-%03d", i), Memory: "256M", Start: &start})
		return err
	}); err != nil {
		return err
	}
	moved := map[string]bool{}
	if err := timed("migrate", cfg.Samples, func(i int) error {
		name := pick(i)
		for moved[name] {
			name = pick(i + len(moved))
		}
		moved[name] = true
		_, err := cl.MigrateVM(ctx, name, api.MigrateRequest{To: "auto", Plaintext: true})
		return err
	}); err != nil {
		return err
	}
	if err := timed("delete", cfg.Samples, func(i int) error { return cl.DeleteVM(ctx, fmt.Sprintf("api-%03d", i)) }); err != nil {
		return err
	}
	// The migrations end before the host dies: its restarts are timed alone.
	wctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	return wait.Until(wctx, time.Second, func(context.Context) (bool, error) {
		migs, err := st.ListMigrations(ctx)
		if err != nil {
			return false, err
		}
		busy := 0
		for _, m := range migs {
			if !api.MigrationTerminal(m.Phase) {
				busy++
			}
		}
		return busy == 0, fmt.Errorf("%d migrations in flight", busy)
	})
}

// killHost kills the victim and times its lease's expiry, the restarts
// being issued and its guests running elsewhere.
func killHost(ctx context.Context, c *simcluster.Cluster, st *store.Store, victim string, guests []guest) (Death, error) {
	d := Death{Guests: len(guests)}
	s, err := st.Stats(ctx)
	if err != nil {
		return d, err
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	mine := map[string]bool{}
	for _, g := range guests {
		mine[g.name] = true
	}
	kill := time.Now()
	c.Host(victim).Kill()
	var expired, issued time.Time
	moved := map[string]bool{}
	see := func(ch store.Change) {
		switch {
		case ch.Kind == store.KindNode && ch.Name == victim && ch.Deleted && expired.IsZero():
			expired = time.Now()
		case ch.Kind == store.KindPlacement && mine[ch.Name] && !ch.Deleted && string(ch.Value) != victim:
			moved[ch.Name] = true
			if len(moved) == len(guests) {
				issued = time.Now()
			}
		}
	}
	rev := s.Revision
	for issued.IsZero() {
		// A watch ends when its etcd member loses its leader (busy
		// 3-member clusters do): read what changed meanwhile, watch on.
		for ch := range st.Watch(wctx, rev+1, store.KindNode, store.KindPlacement) {
			see(ch)
			rev = ch.Rev
			if !issued.IsZero() {
				break
			}
		}
		if !issued.IsZero() {
			break
		}
		if wctx.Err() != nil {
			return d, fmt.Errorf("lease expired: %v; %d of %d restarts issued in 2 minutes", !expired.IsZero(), len(moved), len(guests))
		}
		placed, prev, err := st.Placements(wctx)
		if err != nil {
			continue
		}
		nodes, err := st.ListNodes(wctx)
		if err != nil {
			continue
		}
		if !slices.ContainsFunc(nodes, func(n api.Node) bool { return n.Name == victim }) {
			see(store.Change{Kind: store.KindNode, Name: victim, Deleted: true})
		}
		for name, node := range placed {
			see(store.Change{Kind: store.KindPlacement, Name: name, Value: []byte(node)})
		}
		rev = prev
	}
	if expired.IsZero() {
		return d, fmt.Errorf("the guests were placed elsewhere before %s's lease expired", victim)
	}
	d.LeaseExpiredMS = ms(expired.Sub(kill))
	d.RestartsIssuedMS = ms(issued.Sub(expired))
	err = wait.Until(wctx, 10*time.Millisecond, func(context.Context) (bool, error) {
		for _, g := range guests {
			ps := c.World.Procs(g.uuid)
			if len(ps) != 1 || ps[0].Host == victim || !ps[0].Running() {
				return false, fmt.Errorf("%s: %d copies", g.name, len(ps))
			}
		}
		return true, nil
	})
	d.AllRunningMS = ms(time.Since(expired))
	return d, err
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func summarise(ds []time.Duration) Latency {
	if len(ds) == 0 {
		return Latency{}
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	at := func(q float64) float64 { return ms(ds[min(len(ds)-1, int(q*float64(len(ds))))]) }
	return Latency{N: len(ds), P50MS: at(0.5), P99MS: at(0.99), MaxMS: ms(ds[len(ds)-1])}
}

// selfCPU is the CPU time this process used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// PIDsCPU is the CPU time the processes used (from /proc; clock ticks of
// 10 ms).
func PIDsCPU(pids []int) time.Duration {
	var total time.Duration
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// Fields after the command (which may hold spaces) in ")".
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		s, _ := strconv.ParseInt(f[12], 10, 64)
		total += time.Duration(u+s) * 10 * time.Millisecond
	}
	return total
}

// placedOn is those of the guests that are placed on host now.
func placedOn(ctx context.Context, st *store.Store, host string, guests []guest) ([]guest, error) {
	placed, _, err := st.Placements(ctx)
	if err != nil {
		return nil, err
	}
	var out []guest
	for _, g := range guests {
		if placed[g.name] == host {
			out = append(out, g)
		}
	}
	return out, nil
}

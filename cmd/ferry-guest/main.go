// Command ferry-guest is the static program inside Ferry's built-in guest
// image. It runs as PID 1 (after /init has loaded the virtio modules), brings
// up the network from the kernel command line, serves HTTP on port 80 with
// the guest's health, boot id and uptime, dirties memory at a requested rate,
// writes fsync'd sequence records to its disk, pets the i6300esb watchdog,
// and powers the guest off when the ACPI power button is pressed.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ReadyMarker must match qemu.ReadyMarker: the host looks for it on the console.
const ReadyMarker = "ferry-guest: ready"

type guest struct {
	name   string
	bootID string
	start  time.Time
	ip     string
	dirty  *dirtier
	filled filled
	disk   *seqDisk
	wd     *watchdog
	cpu    burner
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("ferry-guest: ")
	args := cmdline()
	g := &guest{
		name:   args["ferry.name"],
		bootID: readTrim("/proc/sys/kernel/random/boot_id"),
		start:  time.Now(),
		ip:     args["ferry.ip"],
		dirty:  newDirtier(),
	}
	if os.Getpid() == 1 {
		go reap()
	}
	if err := setupNetwork(args["ferry.ip"], args["ferry.gw"]); err != nil {
		log.Printf("network: %v", err)
	}
	g.disk = openSeqDisk(args["ferry.disk"])
	g.wd = startWatchdog()
	go watchPowerButton()
	go handleSignals()

	mux := http.NewServeMux()
	mux.HandleFunc("GET /", g.health)
	mux.HandleFunc("GET /health", g.health)
	mux.HandleFunc("POST /dirty", g.setDirty)
	mux.HandleFunc("POST /cpu", g.setCPU)
	mux.HandleFunc("POST /memory", g.memoryFill)
	mux.HandleFunc("GET /memory", g.memoryCheck)
	mux.HandleFunc("GET /disk", g.diskState)
	mux.HandleFunc("POST /disk/write", g.diskWrite)
	mux.HandleFunc("POST /disk/stream", g.diskStream)
	mux.HandleFunc("POST /watchdog", g.setWatchdog)
	mux.HandleFunc("GET /stream", g.stream)
	srv := &http.Server{Addr: ":80", Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.Printf("ready ip=%s boot_id=%s", g.ip, g.bootID)
	fmt.Fprintf(os.Stdout, "%s name=%s boot_id=%s\n", ReadyMarker, g.name, g.bootID)
	if args["ferry.probe"] == "1" {
		poweroff()
	}
	if err := srv.ListenAndServe(); err != nil {
		log.Printf("http: %v", err)
	}
	select {}
}

func cmdline() map[string]string {
	m := map[string]string{}
	for _, f := range strings.Fields(readTrim("/proc/cmdline")) {
		k, v, _ := strings.Cut(f, "=")
		m[k] = v
	}
	return m
}

func readTrim(p string) string {
	b, _ := os.ReadFile(p)
	return strings.TrimSpace(string(b))
}

// reap collects orphaned children, as PID 1 must.
func reap() {
	ch := make(chan os.Signal, 8)
	signal.Notify(ch, syscall.SIGCHLD)
	for range ch {
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}

func handleSignals() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGUSR2)
	<-ch
	poweroff()
}

func poweroff() {
	log.Printf("powering off")
	syscall.Sync()
	syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF)
	os.Exit(0)
}

// Health is what GET /health returns.
type Health struct {
	Status   string    `json:"status"`
	Name     string    `json:"name"`
	BootID   string    `json:"boot_id"`
	UptimeS  float64   `json:"uptime_s"`
	IP       string    `json:"ip"`
	Dirty    dirtyInfo `json:"dirty"`
	Disk     diskInfo  `json:"disk"`
	Watchdog string    `json:"watchdog"`
}

func (g *guest) health(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, Health{
		Status:   "ok",
		Name:     g.name,
		BootID:   g.bootID,
		UptimeS:  uptime(),
		IP:       g.ip,
		Dirty:    g.dirty.info(),
		Disk:     g.disk.info(),
		Watchdog: g.wd.state(),
	})
}

// uptime is the guest kernel's uptime (it keeps counting across a migration).
func uptime() float64 {
	f := strings.Fields(readTrim("/proc/uptime"))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

func (g *guest) setDirty(w http.ResponseWriter, r *http.Request) {
	rate, err := strconv.ParseFloat(r.URL.Query().Get("rate"), 64)
	if err != nil || rate < 0 {
		http.Error(w, "rate must be a non-negative number of MiB/s", http.StatusBadRequest)
		return
	}
	size := 64
	if s := r.URL.Query().Get("size"); s != "" {
		if size, err = strconv.Atoi(s); err != nil || size <= 0 {
			http.Error(w, "size must be a positive number of MiB", http.StatusBadRequest)
			return
		}
	}
	random := r.URL.Query().Get("fill") == "random"
	if f := r.URL.Query().Get("fill"); f != "" && f != "random" && f != "sparse" {
		http.Error(w, "fill must be sparse (three words per page, the default) or random (whole pages, incompressible)", http.StatusBadRequest)
		return
	}
	if err := g.dirty.set(rate, size, random); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	writeJSON(w, g.dirty.info())
}

func (g *guest) diskState(w http.ResponseWriter, r *http.Request) { writeJSON(w, g.disk.info()) }

func (g *guest) diskWrite(w http.ResponseWriter, r *http.Request) {
	n := 1
	if s := r.URL.Query().Get("count"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v <= 0 || v > 100000 {
			http.Error(w, "count must be 1..100000", http.StatusBadRequest)
			return
		}
		n = v
	}
	if err := g.disk.writeN(n); err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	writeJSON(w, g.disk.info())
}

func (g *guest) diskStream(w http.ResponseWriter, r *http.Request) {
	iv, err := time.ParseDuration(r.URL.Query().Get("interval"))
	if err != nil || iv < 0 {
		http.Error(w, "interval must be a duration such as 10ms (0 stops)", http.StatusBadRequest)
		return
	}
	if err := g.disk.stream(iv); err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	writeJSON(w, g.disk.info())
}

func (g *guest) setWatchdog(w http.ResponseWriter, r *http.Request) {
	g.wd.setPetting(r.URL.Query().Get("pet") != "false")
	writeJSON(w, map[string]string{"watchdog": g.wd.state()})
}

// stream writes a numbered line every interval until the client goes away:
// a long-lived TCP connection for migration tests.
func (g *guest) stream(w http.ResponseWriter, r *http.Request) {
	iv := 10 * time.Millisecond
	if s := r.URL.Query().Get("interval"); s != "" {
		if d, err := time.ParseDuration(s); err == nil && d >= time.Millisecond {
			iv = d
		}
	}
	fl, _ := w.(http.Flusher)
	w.Header().Set("Content-Type", "text/plain")
	ctx := r.Context()
	t := time.NewTicker(iv)
	defer t.Stop()
	for i := 0; ; i++ {
		if _, err := fmt.Fprintf(w, "%d %s\n", i, g.bootID); err != nil {
			return
		}
		if fl != nil {
			fl.Flush()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

var _ = context.Background

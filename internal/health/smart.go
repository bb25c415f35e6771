package health

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// SMARTDir is where, under the root, SMART documents are read from: one
// `smartctl --json -H -A DEVICE` answer per disk, named DEVICE.json. Tests
// and the testbed write their traces there; an operator who would rather
// not let the agent run smartctl can have a timer write them.
const SMARTDir = "run/ferry/smart"

// SMART reads disks' SMART health: the self-assessment (an alarm when it
// fails), the ATA attributes that count failing sectors, NVMe media errors
// and critical warnings, and the drive's temperature. It reads the
// documents under Root/SMARTDir when that directory exists; otherwise, on
// the real root with smartctl installed, it asks smartctl itself, at most
// once per Every (default 10 minutes: each query wakes the disk's
// firmware), and answers from the last query in between.
type SMART struct {
	Root  string
	Every time.Duration

	mu   sync.Mutex
	last time.Time
	memo []Reading
}

// NewSMART returns a SMART source under root.
func NewSMART(root string) *SMART { return &SMART{Root: root} }

// Name is "smart".
func (*SMART) Name() string { return "smart" }

// ataCounters are the ATA attributes whose raw values count failing sectors,
// by attribute ID; Backblaze's drive statistics single them out as the ones
// that rise before a disk dies.
var ataCounters = map[int]string{
	5:   "reallocated_sectors",
	187: "reported_uncorrectable",
	197: "pending_sectors",
	198: "offline_uncorrectable",
}

// smartDoc is the part of smartctl's JSON answer this source reads.
type smartDoc struct {
	Device struct {
		Name string `json:"name"`
	} `json:"device"`
	SmartStatus *struct {
		Passed bool `json:"passed"`
	} `json:"smart_status"`
	ATA *struct {
		Table []struct {
			ID  int `json:"id"`
			Raw struct {
				Value float64 `json:"value"`
			} `json:"raw"`
		} `json:"table"`
	} `json:"ata_smart_attributes"`
	NVMe *struct {
		CriticalWarning float64 `json:"critical_warning"`
		MediaErrors     float64 `json:"media_errors"`
	} `json:"nvme_smart_health_information_log"`
	Temperature *struct {
		Current float64 `json:"current"`
	} `json:"temperature"`
}

// Read returns the readings of every disk.
func (s *SMART) Read(ctx context.Context) ([]Reading, error) {
	dir := filepath.Join(s.Root, SMARTDir)
	if _, err := os.Stat(dir); err == nil {
		return s.readDir(dir)
	}
	if s.Root != "/" && s.Root != "" {
		return nil, nil
	}
	if _, err := exec.LookPath("smartctl"); err != nil {
		return nil, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	every := s.Every
	if every <= 0 {
		every = 10 * time.Minute
	}
	if !s.last.IsZero() && time.Since(s.last) < every {
		return s.memo, nil
	}
	out, err := s.query(ctx)
	if err != nil {
		return nil, err
	}
	s.last, s.memo = time.Now(), out
	return out, nil
}

// readDir reads recorded documents.
func (s *SMART) readDir(dir string) ([]Reading, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, err
	}
	var out []Reading
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		rs, err := parseSMART(strings.TrimSuffix(filepath.Base(f), ".json"), b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		out = append(out, rs...)
	}
	return out, nil
}

// query asks smartctl about every disk it finds.
func (s *SMART) query(ctx context.Context) ([]Reading, error) {
	b, err := exec.CommandContext(ctx, "smartctl", "--json", "--scan").Output()
	if err != nil {
		return nil, fmt.Errorf("smartctl --scan: %w", err)
	}
	var scan struct {
		Devices []struct {
			Name string `json:"name"`
		} `json:"devices"`
	}
	if err := json.Unmarshal(b, &scan); err != nil {
		return nil, fmt.Errorf("smartctl --scan: %w", err)
	}
	var out []Reading
	for _, d := range scan.Devices {
		// smartctl's exit status is a bit mask that is non-zero for a
		// failing disk too: the JSON answer is what counts.
		b, _ := exec.CommandContext(ctx, "smartctl", "--json", "-H", "-A", d.Name).Output()
		rs, err := parseSMART(filepath.Base(d.Name), b)
		if err != nil {
			continue
		}
		out = append(out, rs...)
	}
	return out, nil
}

// parseSMART turns one smartctl answer about disk into readings.
func parseSMART(disk string, b []byte) ([]Reading, error) {
	var d smartDoc
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, err
	}
	p := "smart/" + disk + "/"
	var out []Reading
	if d.SmartStatus != nil {
		failed := 0.0
		if !d.SmartStatus.Passed {
			failed = 1
		}
		out = append(out, Reading{Signal: p + "failed", Kind: Fault, Value: failed})
	}
	if d.ATA != nil {
		for _, a := range d.ATA.Table {
			if name, ok := ataCounters[a.ID]; ok {
				out = append(out, Reading{Signal: p + name, Kind: Counter, Value: a.Raw.Value, Unit: "sectors"})
			}
		}
	}
	if d.NVMe != nil {
		out = append(out,
			Reading{Signal: p + "media_errors", Kind: Counter, Value: d.NVMe.MediaErrors, Unit: "errors"},
			Reading{Signal: p + "critical_warning", Kind: Fault, Value: d.NVMe.CriticalWarning})
	}
	if d.Temperature != nil {
		out = append(out, Reading{Signal: p + "temperature", Kind: Gauge, Value: d.Temperature.Current, Unit: "C"})
	}
	return out, nil
}

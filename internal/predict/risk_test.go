package predict_test

import (
	"context"
	"fmt"
	"math"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/health"
	"github.com/ferryvm/ferry/internal/predict"
	"github.com/ferryvm/ferry/internal/telemetry"
)

// A trace feeds one health source through files under a root (or the
// agent's own signals), one sampling at a time: level is the gauge's value
// or the counter's rate per second at that sampling.
type source struct {
	name string
	// limit is the level or rate per second at which the source's signal
	// fails (the default, or the one its files state).
	limit float64
	// write sets the source's state for one sampling: a gauge's level, or
	// a counter's total so far.
	write func(t *testing.T, root string, self *health.Self, v float64)
	gauge bool
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func smartDoc(attrs, temp string) string {
	return `{"device":{"name":"/dev/sda"},"smart_status":{"passed":true},` +
		`"ata_smart_attributes":{"table":[` + attrs + `]},"temperature":{"current":` + temp + `}}`
}

var sources = []source{
	{name: "edac correctable errors", limit: 10.0 / 60, write: func(t *testing.T, root string, _ *health.Self, v float64) {
		writeFile(t, filepath.Join(root, "sys/devices/system/edac/mc/mc0/ce_count"), fmt.Sprint(math.Round(v)))
		writeFile(t, filepath.Join(root, "sys/devices/system/edac/mc/mc0/ue_count"), "0")
	}},
	{name: "block I/O errors", limit: 1.0 / 60, write: func(t *testing.T, root string, _ *health.Self, v float64) {
		writeFile(t, filepath.Join(root, "sys/block/sda/device/ioerr_cnt"), fmt.Sprintf("0x%x", int(math.Round(v))))
	}},
	{name: "SMART reallocated sectors", limit: 1.0 / 60, write: func(t *testing.T, root string, _ *health.Self, v float64) {
		writeFile(t, filepath.Join(root, health.SMARTDir, "sda.json"),
			smartDoc(fmt.Sprintf(`{"id":5,"raw":{"value":%d}}`, int(math.Round(v))), "35"))
	}},
	{name: "SMART temperature", limit: 70, gauge: true, write: func(t *testing.T, root string, _ *health.Self, v float64) {
		writeFile(t, filepath.Join(root, health.SMARTDir, "sda.json"), smartDoc(`{"id":5,"raw":{"value":0}}`, fmt.Sprintf("%.0f", v)))
	}},
	{name: "NIC receive errors", limit: 10, write: func(t *testing.T, root string, _ *health.Self, v float64) {
		writeFile(t, filepath.Join(root, "sys/class/net/eth0/statistics/rx_errors"), fmt.Sprint(math.Round(v)))
	}},
	{name: "NIC link flaps", limit: 2.0 / 60, write: func(t *testing.T, root string, _ *health.Self, v float64) {
		writeFile(t, filepath.Join(root, "sys/class/net/eth0/carrier_changes"), fmt.Sprint(math.Round(v)))
	}},
	{name: "thermal zone with its trip point", limit: 85, gauge: true, write: func(t *testing.T, root string, _ *health.Self, v float64) {
		z := filepath.Join(root, "sys/class/thermal/thermal_zone0")
		writeFile(t, filepath.Join(z, "temp"), fmt.Sprint(int(v*1000)))
		writeFile(t, filepath.Join(z, "trip_point_0_type"), "passive")
		writeFile(t, filepath.Join(z, "trip_point_0_temp"), "70000")
		writeFile(t, filepath.Join(z, "trip_point_1_type"), "critical")
		writeFile(t, filepath.Join(z, "trip_point_1_temp"), "85000")
	}},
	{name: "hwmon sensor", limit: 95, gauge: true, write: func(t *testing.T, root string, _ *health.Self, v float64) {
		writeFile(t, filepath.Join(root, "sys/class/hwmon/hwmon0/temp1_input"), fmt.Sprint(int(v*1000)))
	}},
	{name: "QEMU errors", limit: 2.0 / 60, write: func(t *testing.T, _ string, self *health.Self, v float64) {
		// The agent counts failures one by one: catch up to the total.
		for cur := qemuErrors(self); cur < math.Round(v); cur++ {
			self.QEMUError()
		}
	}},
	{name: "lease renewal latency", limit: 2, gauge: true, write: func(t *testing.T, _ string, self *health.Self, v float64) {
		self.LeaseRenewed(time.Duration(v * float64(time.Second)))
	}},
}

func qemuErrors(s *health.Self) float64 {
	rs, _ := s.Read(context.Background())
	for _, r := range rs {
		if r.Signal == "agent/qemu_errors" {
			return r.Value
		}
	}
	return 0
}

// history is how a source is sampled: every 30 s for 20 minutes for gauges;
// every minute for two hours (the model's window) for counters, whose
// sparse events need longer to show a trend (a rise to 0.8 errors a minute
// is 48 errors in two hours).
func history(src source) (step time.Duration, samples int) {
	if src.gauge {
		return 30 * time.Second, 40
	}
	return time.Minute, 120
}

const (
	step    = 30 * time.Second // TestAlarmsAndFaults
	samples = 40
)

// replay feeds a source samples levels (gauge values or counter rates per
// second) and returns the host's risk at the end.
func replay(t *testing.T, src source, level func(i int) float64) predict.HostRisk {
	root := t.TempDir()
	self := &health.Self{}
	r := health.NewReader(root, self, nil)
	tr := predict.NewTracker(0)
	start := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	total := 0.0
	var now time.Time
	step, samples := history(src)
	for i := 0; i < samples; i++ {
		now = start.Add(time.Duration(i) * step)
		v := level(i)
		if !src.gauge {
			total += v * step.Seconds()
			v = total
		}
		src.write(t, root, self, v)
		tr.Record(now, r.Read(context.Background()))
	}
	return tr.Assess(predict.RiskConfig{Horizon: 30 * time.Minute}, now)
}

// TestRisingTrendRaisesRiskFlatNoiseDoesNot is the test per health
// source: a signal climbing towards its failure limit (still below it
// now) makes its host likely to fail within the horizon, with that signal
// named as the reason; the same source flat but noisy, with bursts of half
// the limit, leaves the host's risk near zero.
func TestRisingTrendRaisesRiskFlatNoiseDoesNot(t *testing.T) {
	for _, src := range sources {
		t.Run(src.name, func(t *testing.T) {
			base := 0.0
			if src.gauge {
				base = src.limit * 0.5
			}
			// Rising: at 80 % of the limit now, on a course past it
			// within the horizon (30 minutes), with a little noise.
			// Gauges rise from the base towards 150 % of the limit at
			// the horizon. Counters' events are sparse (a limit of one
			// a minute is 30 events a horizon), and a trend among them
			// needs room to show: their rate rises from nothing an hour
			// and a half ago, which passes the limit within the horizon.
			rng := rand.New(rand.NewSource(1))
			step, n := history(src)
			rising := replay(t, src, func(i int) float64 {
				ago := float64(n-1-i) * step.Minutes()
				v := math.Max(base, src.limit*(0.8-0.7*ago/30))
				if !src.gauge {
					v = math.Max(0, src.limit*0.8*(1-ago/90))
				}
				return v * (1 + 0.03*(rng.Float64()-0.5))
			})
			if rising.Probability < 0.5 || len(rising.Signals) == 0 {
				t.Fatalf("rising: risk %.3f (%+v), want at least 0.5", rising.Probability, rising.Signals)
			}
			if !strings.Contains(rising.Signals[0].Reason, "rising") {
				t.Errorf("rising: the reason does not say so: %q", rising.Signals[0].Reason)
			}
			// Flat and noisy: around a quarter of the limit (or the
			// base), swinging by up to its own size; five different
			// draws of the noise.
			level := math.Max(base, src.limit*0.25)
			var flat predict.HostRisk
			for seed := int64(2); seed < 7; seed++ {
				rng = rand.New(rand.NewSource(seed))
				flat = replay(t, src, func(i int) float64 {
					return level + src.limit*0.25*(2*rng.Float64()-1)
				})
				if flat.Probability > 0.05 {
					t.Fatalf("flat and noisy (draw %d): risk %.3f (%+v), want near zero", seed, flat.Probability, flat.Signals)
				}
			}
			t.Logf("rising %.3f (%s); flat %.4f", rising.Probability, rising.Signals[0].Reason, flat.Probability)
		})
	}
}

// TestAlarmsAndFaults: a new uncorrectable memory error and a failed SMART
// self-assessment are failures already; an old uncorrectable count that
// does not grow, and a disk that passes, are not.
func TestAlarmsAndFaults(t *testing.T) {
	cases := []struct {
		name  string
		write func(t *testing.T, root string, i int)
		want  bool
	}{
		{"a new uncorrectable error", func(t *testing.T, root string, i int) {
			writeFile(t, filepath.Join(root, "sys/devices/system/edac/mc/mc0/ue_count"), fmt.Sprint(2+boolInt(i > 30)))
		}, true},
		{"an old uncorrectable count", func(t *testing.T, root string, i int) {
			writeFile(t, filepath.Join(root, "sys/devices/system/edac/mc/mc0/ue_count"), "2")
		}, false},
		{"SMART fails", func(t *testing.T, root string, i int) {
			writeFile(t, filepath.Join(root, health.SMARTDir, "sdb.json"),
				strings.Replace(smartDoc("", "30"), `"passed":true`, fmt.Sprintf(`"passed":%v`, i < 35), 1))
		}, true},
		{"SMART passes", func(t *testing.T, root string, i int) {
			writeFile(t, filepath.Join(root, health.SMARTDir, "sdb.json"), smartDoc("", "30"))
		}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			r := health.NewReader(root, nil, nil)
			tr := predict.NewTracker(0)
			start := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
			var now time.Time
			for i := 0; i < samples; i++ {
				now = start.Add(time.Duration(i) * step)
				c.write(t, root, i)
				tr.Record(now, r.Read(context.Background()))
			}
			got := tr.Assess(predict.RiskConfig{}, now)
			if failing := got.Probability > 0.9; failing != c.want {
				t.Fatalf("risk %.3f (%+v), want failing=%v", got.Probability, got.Signals, c.want)
			}
		})
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestRiskCombinesSignalsAndKeepsReasons: two signals each somewhat likely
// to fail make the host more likely to than either; a configured limit
// overrides the default.
func TestRiskCombinesSignalsAndKeepsReasons(t *testing.T) {
	now := time.Date(2026, 11, 30, 1, 0, 0, 0, time.UTC)
	flat := func(v float64) predict.Signal {
		s := predict.Signal{Kind: health.Gauge, Unit: "C"}
		for i := 0; i < 20; i++ {
			s.Points = append(s.Points, pt(now.Add(-time.Duration(20-i)*time.Minute), v+float64(i%2)*2-1))
		}
		return s
	}
	a, b := flat(94), flat(94)
	a.Name, b.Name = "thermal/zone0", "hwmon/hwmon0/temp1"
	one := predict.Assess(predict.RiskConfig{}, now, []predict.Signal{a})
	both := predict.Assess(predict.RiskConfig{}, now, []predict.Signal{a, b})
	if !(one.Probability > 0.1 && both.Probability > one.Probability) || len(both.Signals) != 2 {
		t.Fatalf("one signal %.3f, two %.3f (%d reasons)", one.Probability, both.Probability, len(both.Signals))
	}
	cool := predict.Assess(predict.RiskConfig{Limits: map[string]float64{"thermal": 120}}, now, []predict.Signal{a})
	if cool.Probability > 0.01 {
		t.Fatalf("with the limit raised to 120 C: %.3f", cool.Probability)
	}
}

func pt(t time.Time, v float64) telemetry.Point { return telemetry.Point{T: t, V: v} }

// TestSilenceIsNoRisk: a counter that has seen no event is not a risk,
// however short its history (CI once put a host in maintenance because its
// QEMU had not crashed in the 1.5 s it had been watched: a zero count over
// so short a time has a large uncertainty, which must not read as risk);
// with enough history, the same quiet counter is judged, and healthy.
func TestSilenceIsNoRisk(t *testing.T) {
	now := time.Date(2026, 11, 30, 1, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		horizon, every time.Duration
	}{{3 * time.Second, 100 * time.Millisecond}, {30 * time.Minute, 10 * time.Second}, {2 * time.Hour, time.Minute}} {
		for _, watched := range []time.Duration{c.horizon / 2, c.horizon, 4 * c.horizon} {
			s := predict.Signal{Name: "agent/qemu_errors", Kind: health.Counter, Unit: "errors"}
			for at := now.Add(-watched); !at.After(now); at = at.Add(c.every) {
				s.Points = append(s.Points, pt(at, 0))
			}
			got := predict.Assess(predict.RiskConfig{Horizon: c.horizon}, now, []predict.Signal{s})
			if got.Probability > 0.01 {
				t.Errorf("horizon %s, watched %s with no crash: risk %.3f (%+v)", c.horizon, watched, got.Probability, got.Signals)
			}
		}
	}
}

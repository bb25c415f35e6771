package health

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// EDAC reads the memory controllers' error counters
// (sys/devices/system/edac/mc/mc*/ce_count and ue_count).
type EDAC struct{ Root string }

// Name is "edac".
func (EDAC) Name() string { return "edac" }

// Read returns a correctable-error counter and an uncorrectable-error alarm
// per memory controller.
func (e EDAC) Read(ctx context.Context) ([]Reading, error) {
	dirs, err := glob(e.Root, "sys/devices/system/edac/mc/mc*")
	if err != nil {
		return nil, err
	}
	var out []Reading
	for _, d := range dirs {
		mc := filepath.Base(d)
		if v, ok := readNumber(filepath.Join(d, "ce_count")); ok {
			out = append(out, Reading{Signal: "edac/" + mc + "/ce", Kind: Counter, Value: v, Unit: "errors"})
		}
		if v, ok := readNumber(filepath.Join(d, "ue_count")); ok {
			out = append(out, Reading{Signal: "edac/" + mc + "/ue", Kind: Alarm, Value: v, Unit: "errors"})
		}
	}
	return out, nil
}

// Block reads the block layer's I/O error counters of SCSI-like disks
// (sys/block/*/device/ioerr_cnt, written by the kernel in hexadecimal).
type Block struct{ Root string }

// Name is "block".
func (Block) Name() string { return "block" }

// Read returns an I/O error counter per disk that reports one.
func (b Block) Read(ctx context.Context) ([]Reading, error) {
	files, err := glob(b.Root, "sys/block/*/device/ioerr_cnt")
	if err != nil {
		return nil, err
	}
	var out []Reading
	for _, f := range files {
		disk := filepath.Base(filepath.Dir(filepath.Dir(f)))
		if v, ok := readNumber(f); ok {
			out = append(out, Reading{Signal: "block/" + disk + "/ioerr", Kind: Counter, Value: v, Unit: "errors"})
		}
	}
	return out, nil
}

// nicCounters are the interface statistics that count faults, not traffic.
var nicCounters = []string{"rx_errors", "tx_errors", "rx_crc_errors", "rx_frame_errors", "tx_carrier_errors"}

// NIC reads network interfaces' error counters and carrier changes (link
// flaps) from sys/class/net; the loopback device is left out.
type NIC struct{ Root string }

// Name is "nic".
func (NIC) Name() string { return "nic" }

// Read returns the error counters of every interface and its flap counter.
func (n NIC) Read(ctx context.Context) ([]Reading, error) {
	dirs, err := glob(n.Root, "sys/class/net/*")
	if err != nil {
		return nil, err
	}
	var out []Reading
	for _, d := range dirs {
		dev := filepath.Base(d)
		if dev == "lo" {
			continue
		}
		for _, c := range nicCounters {
			if v, ok := readNumber(filepath.Join(d, "statistics", c)); ok {
				out = append(out, Reading{Signal: "nic/" + dev + "/" + c, Kind: Counter, Value: v, Unit: "errors"})
			}
		}
		if v, ok := readNumber(filepath.Join(d, "carrier_changes")); ok {
			out = append(out, Reading{Signal: "nic/" + dev + "/carrier_changes", Kind: Counter, Value: v, Unit: "flaps"})
		}
	}
	return out, nil
}

// Thermal reads temperatures in degrees Celsius: the thermal zones
// (sys/class/thermal/thermal_zone*/temp, with a critical trip point as the
// limit) and hwmon sensors (sys/class/hwmon/hwmon*/temp*_input, with
// temp*_crit as the limit). The kernel writes millidegrees.
type Thermal struct{ Root string }

// Name is "thermal".
func (Thermal) Name() string { return "thermal" }

// Read returns one gauge per zone and sensor.
func (t Thermal) Read(ctx context.Context) ([]Reading, error) {
	zones, err := glob(t.Root, "sys/class/thermal/thermal_zone*")
	if err != nil {
		return nil, err
	}
	var out []Reading
	for _, z := range zones {
		v, ok := readNumber(filepath.Join(z, "temp"))
		if !ok {
			continue
		}
		out = append(out, Reading{Signal: "thermal/" + filepath.Base(z), Kind: Gauge, Value: v / 1000,
			Limit: criticalTrip(z) / 1000, Unit: "C"})
	}
	inputs, err := glob(t.Root, "sys/class/hwmon/hwmon*/temp*_input")
	if err != nil {
		return nil, err
	}
	for _, in := range inputs {
		v, ok := readNumber(in)
		if !ok {
			continue
		}
		base := strings.TrimSuffix(in, "_input")
		crit, _ := readNumber(base + "_crit")
		out = append(out, Reading{Signal: "hwmon/" + filepath.Base(filepath.Dir(in)) + "/" + filepath.Base(base),
			Kind: Gauge, Value: v / 1000, Limit: crit / 1000, Unit: "C"})
	}
	return out, nil
}

// criticalTrip returns a thermal zone's critical trip temperature in
// millidegrees, or 0 when it states none.
func criticalTrip(zone string) float64 {
	types, _ := filepath.Glob(filepath.Join(zone, "trip_point_*_type"))
	for _, tf := range types {
		b, err := os.ReadFile(tf)
		if err != nil || strings.TrimSpace(string(b)) != "critical" {
			continue
		}
		if v, ok := readNumber(strings.TrimSuffix(tf, "_type") + "_temp"); ok && v > 0 {
			return v
		}
	}
	return 0
}

// glob returns the paths under root matching pattern, sorted.
func glob(root, pattern string) ([]string, error) {
	m, err := filepath.Glob(filepath.Join(root, pattern))
	sort.Strings(m)
	return m, err
}

// readNumber reads a file holding one decimal or 0x-prefixed hexadecimal
// number; false when it is missing or holds something else.
func readNumber(path string) (float64, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	s := strings.TrimSpace(string(b))
	if strings.HasPrefix(s, "0x") {
		u, err := strconv.ParseUint(s[2:], 16, 64)
		return float64(u), err == nil
	}
	v, err := strconv.ParseFloat(s, 64)
	return v, err == nil
}

package api

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidateName checks a VM or node name: lowercase letters, digits and
// hyphens, 1-63 characters, starting and ending with a letter or digit
// (a DNS label, so names work as host names and in file paths).
func ValidateName(kind, name string) error {
	if name == "" {
		return fmt.Errorf("%s name is empty", kind)
	}
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%s name %q is invalid: use 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit", kind, name)
	}
	return nil
}

// ParseSize parses a size such as "256M", "1G", "1.5G" or "1048576" (bytes)
// into bytes. Suffixes are powers of 1024; "MiB"/"MB" style spellings are accepted.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, fmt.Errorf("size is empty")
	}
	up := strings.ToUpper(t)
	up = strings.TrimSuffix(up, "IB")
	up = strings.TrimSuffix(up, "B")
	mult := int64(1)
	if n := len(up); n > 0 {
		switch up[n-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult != 1 {
			up = up[:n-1]
		}
	}
	f, err := strconv.ParseFloat(strings.TrimSpace(up), 64)
	if err != nil || f != f {
		return 0, fmt.Errorf("size %q is not a number with an optional K, M, G or T suffix", s)
	}
	if f <= 0 {
		return 0, fmt.Errorf("size %q must be positive", s)
	}
	b := f * float64(mult)
	if b > float64(1<<50) {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return int64(b), nil
}

// ParseSizeMiB parses a size and returns it in whole MiB, rejecting sizes
// that are not a whole number of MiB.
func ParseSizeMiB(s string) (int, error) {
	b, err := ParseSize(s)
	if err != nil {
		return 0, err
	}
	if b%(1<<20) != 0 {
		return 0, fmt.Errorf("size %q is not a whole number of MiB", s)
	}
	return int(b >> 20), nil
}

// Limits on what a VM may ask for.
const (
	MinMemoryMiB = 64
	MaxMemoryMiB = 1 << 20
	MaxCPUs      = 256
	MinDiskMiB   = 16
	MaxDiskMiB   = 64 << 20
)

// FormatMiB renders MiB as a short human size.
func FormatMiB(m int) string {
	switch {
	case m >= 1<<20 && m%(1<<20) == 0:
		return fmt.Sprintf("%dT", m>>20)
	case m >= 1<<10 && m%(1<<10) == 0:
		return fmt.Sprintf("%dG", m>>10)
	default:
		return fmt.Sprintf("%dM", m)
	}
}

var labelKeyRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9._/-]{0,61}[a-z0-9])?$`)
var labelValueRE = regexp.MustCompile(`^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$`)

// MaxLabels bounds a guest's labels.
const MaxLabels = 32

// ValidateLabel checks a label: a key of lowercase letters, digits, '.',
// '_', '-' and '/' (1-63, starting and ending with a letter or digit) and
// a value of letters, digits, '.', '_' and '-' (0-63).
func ValidateLabel(key, value string) error {
	if !labelKeyRE.MatchString(key) {
		return fmt.Errorf("label key %q is invalid: use 1-63 lowercase letters, digits, '.', '_', '-' or '/', starting and ending with a letter or digit", key)
	}
	if !labelValueRE.MatchString(value) {
		return fmt.Errorf("label %s: value %q is invalid: use up to 63 letters, digits, '.', '_' or '-', starting and ending with a letter or digit", key, value)
	}
	return nil
}

// ValidateLabels checks a guest's labels.
func ValidateLabels(labels map[string]string) error {
	if len(labels) > MaxLabels {
		return fmt.Errorf("%d labels: at most %d", len(labels), MaxLabels)
	}
	for k, v := range labels {
		if err := ValidateLabel(k, v); err != nil {
			return err
		}
	}
	return nil
}

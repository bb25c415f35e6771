package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"
	"sigs.k8s.io/yaml"
)

func checkOutput(g *globals) error {
	if g.output != "table" && !g.structured() {
		return fmt.Errorf("--output must be table, json or yaml, not %q", g.output)
	}
	return nil
}

// structured reports whether output is for programs (json or yaml).
func (g *globals) structured() bool { return g.output == "json" || g.output == "yaml" }

// emit prints v as --output asks: YAML (from the same field names as the
// JSON) or indented JSON.
func (g *globals) emit(v any) error {
	if g.output == "yaml" {
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = os.Stdout.Write(b)
		return err
	}
	return printJSON(os.Stdout, v)
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table writes rows under header in aligned columns; on a terminal, lines
// longer than it is wide are cut (with "…"), so that a long last column
// (a message) does not wrap over the next rows. -o json or yaml has it all.
func table(w io.Writer, header []string, rows [][]string) {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	tw.Flush()
	width := 0
	if f, ok := w.(*os.File); ok && isTerminal(f) {
		width = terminalWidth(f)
	}
	for _, line := range strings.SplitAfter(b.String(), "\n") {
		io.WriteString(w, fitLine(line, width))
	}
}

// fitLine cuts line (with its newline) to width runes (0: no limit).
func fitLine(line string, width int) string {
	body, nl := strings.CutSuffix(line, "\n")
	r := []rune(body)
	if width <= 1 || len(r) <= width {
		return line
	}
	out := string(r[:width-1]) + "…"
	if nl {
		out += "\n"
	}
	return out
}

// terminalWidth is f's width in columns (0: unknown).
func terminalWidth(f *os.File) int {
	ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ)
	if err != nil {
		return 0
	}
	return int(ws.Col)
}

func age(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t).Round(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	default:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

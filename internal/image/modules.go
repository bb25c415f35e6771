package image

import (
	"bytes"
	"debug/elf"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
)

// moduleIndex maps a normalised module name (dashes as underscores) to its .ko path.
func moduleIndex(root string) (map[string]string, error) {
	idx := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".ko") {
			idx[normalize(strings.TrimSuffix(d.Name(), ".ko"))] = p
		}
		return nil
	})
	return idx, err
}

func normalize(name string) string { return strings.ReplaceAll(name, "-", "_") }

// moduleDepends reads the "depends=" entry of a module's .modinfo section.
func moduleDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	s := f.Section(".modinfo")
	if s == nil {
		return nil, fmt.Errorf("%s has no .modinfo section", path)
	}
	data, err := s.Data()
	if err != nil {
		return nil, err
	}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			if len(v) == 0 {
				return nil, nil
			}
			var out []string
			for _, d := range strings.Split(string(v), ",") {
				out = append(out, normalize(d))
			}
			return out, nil
		}
	}
	return nil, nil
}

// resolveModules returns the modules to load, dependencies first, for the
// wanted roots. Roots not built as modules (built into the kernel) are
// reported in missing and skipped.
func resolveModules(idx map[string]string, roots []string) (order []string, missing []string, err error) {
	seen := map[string]bool{}
	var visit func(string) error
	visit = func(m string) error {
		if seen[m] {
			return nil
		}
		seen[m] = true
		p, ok := idx[m]
		if !ok {
			return fmt.Errorf("module %s not found", m)
		}
		deps, err := moduleDepends(p)
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d); err != nil {
				return fmt.Errorf("%s needs %w", m, err)
			}
		}
		order = append(order, m)
		return nil
	}
	for _, r := range roots {
		r = normalize(r)
		if _, ok := idx[r]; !ok {
			missing = append(missing, r)
			continue
		}
		if err := visit(r); err != nil {
			return nil, nil, err
		}
	}
	return order, missing, nil
}

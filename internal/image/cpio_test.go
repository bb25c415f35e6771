package image

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// The archive we write unpacks with the system's cpio (when present) to the
// same files, links and modes.
func TestCPIOUnpacks(t *testing.T) {
	cpio, err := exec.LookPath("cpio")
	if err != nil {
		busybox := "/bin/busybox"
		if _, err := os.Stat(busybox); err != nil {
			t.Skip("needs cpio or busybox to check the archive")
		}
		cpio = ""
	}
	var buf bytes.Buffer
	w := &cpioWriter{w: &buf}
	w.Dir("bin")
	w.File("init", 0o755, []byte("#!/bin/sh\necho hi\n"))
	w.File("bin/odd", 0o644, []byte("abc")) // length not a multiple of 4
	w.Symlink("bin/sh", "busybox")
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var cmd *exec.Cmd
	if cpio != "" {
		cmd = exec.Command(cpio, "-id", "--quiet")
	} else {
		cmd = exec.Command("/bin/busybox", "cpio", "-id")
	}
	cmd.Dir = dir
	cmd.Stdin = &buf
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio: %v: %s", err, out)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "init")); string(b) != "#!/bin/sh\necho hi\n" {
		t.Errorf("init = %q", b)
	}
	if st, err := os.Stat(filepath.Join(dir, "init")); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("init mode %v %v", st, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "bin/odd")); string(b) != "abc" {
		t.Errorf("odd = %q", b)
	}
	if l, err := os.Readlink(filepath.Join(dir, "bin/sh")); err != nil || l != "busybox" {
		t.Errorf("symlink %q %v", l, err)
	}
}

package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/ferryvm/ferry/internal/image"
	"github.com/spf13/cobra"
)

func imageCmd() *cobra.Command {
	c := &cobra.Command{Use: "image", Short: "Build the built-in guest image"}
	var o image.BuildOptions
	build := &cobra.Command{
		Use:   "build",
		Short: "Build the tiny image: Debian kernel (apt-get download, dpkg -x) + busybox + virtio modules + ferry-guest",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.GuestBinary == "" {
				o.GuestBinary = besideSelf("ferry-guest")
			}
			t, err := image.Build(cmd.Context(), o)
			if err != nil {
				return err
			}
			fmt.Printf("image tiny: kernel %s\n  %s\n  %s\n", t.Manifest.KernelVersion, t.Kernel, t.Initrd)
			if t.PVHKernel != "" {
				fmt.Printf("  %s (uncompressed, booted through PVH)\n", t.PVHKernel)
			} else {
				fmt.Printf("  no PVH kernel: %s (guests boot the compressed kernel, slowly under TCG)\n", t.Manifest.PVHMissing)
			}
			return nil
		},
	}
	f := build.Flags()
	f.StringVar(&o.Dir, "image-dir", image.DefaultDir, "where images are kept")
	f.StringVar(&o.GuestBinary, "guest-binary", "", "the static ferry-guest program (default: ferry-guest beside this binary)")
	f.StringVar(&o.Busybox, "busybox", "/bin/busybox", "a static busybox")
	f.StringVar(&o.KernelPackage, "kernel-package", "", "Debian kernel package (default: the one linux-image-amd64 depends on)")
	f.BoolVar(&o.Force, "force", false, "rebuild even if up to date")
	c.AddCommand(build)
	return c
}

// besideSelf is the path of a file next to the running executable.
func besideSelf(name string) string {
	exe, err := os.Executable()
	if err != nil {
		return name
	}
	return filepath.Join(filepath.Dir(exe), name)
}

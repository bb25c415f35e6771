package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/client"
	"github.com/spf13/cobra"
)

func vmCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "vm", Short: "Create, run and inspect virtual machines"}
	c.AddCommand(vmCreateCmd(g), vmListCmd(g), vmShowCmd(g), vmStartCmd(g), vmStopCmd(g),
		vmRestartCmd(g), vmDeleteCmd(g), vmConsoleCmd(g), vmMigrateCmd(g))
	return c
}

func vmCreateCmd(g *globals) *cobra.Command {
	var req api.VMCreateRequest
	var noStart, noWait bool
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a VM and start it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.outputClient()
			if err != nil {
				return err
			}
			req.Name = args[0]
			if noStart {
				f := false
				req.Start = &f
			}
			ctx := cmd.Context()
			vm, err := cl.CreateVM(ctx, req)
			if err != nil {
				return err
			}
			if !noStart && !noWait {
				if vm, err = waitRunning(ctx, cl, vm.Spec.Name, vm.Spec.StartSeq, timeout); err != nil {
					return err
				}
			}
			return showVM(g, vm)
		},
	}
	f := c.Flags()
	f.StringVar(&req.Memory, "memory", "256M", "memory size (K, M, G, T suffixes)")
	f.IntVar(&req.CPUs, "cpus", 1, "virtual CPUs")
	f.StringVar(&req.Image, "image", api.ImageTiny, "\"tiny\" (the built-in image) or an absolute path to a qcow2 or raw image")
	f.StringVar(&req.Disk, "disk", "", "size of the VM's own disk for the tiny image (default 256M)")
	f.BoolVar(&noStart, "no-start", false, "create the VM stopped")
	f.BoolVar(&req.HA, "ha", false, "high availability: fenced with its host's lease and restarted on a surviving host when the host dies")
	f.IntVar(&req.HAPriority, "ha-priority", 0, "with --ha: restart order after a failure, 0-1000, higher first")
	f.StringVar(&req.AntiAffinity, "anti-affinity", "", "with --ha: a group name; guests of one group never share a host")
	f.StringToStringVar(&req.Labels, "label", nil, "a label KEY=VALUE (repeatable): selects migration policies (ferry policy)")
	f.BoolVar(&noWait, "no-wait", false, "return once the VM is accepted instead of waiting until it runs")
	f.DurationVar(&timeout, "timeout", 2*time.Minute, "how long to wait for the VM to run")
	return c
}

// waitRunning waits until the VM runs for start request seq (and, for the
// tiny image, its guest answers), or reports why it failed.
func waitRunning(ctx context.Context, cl *client.Client, name string, seq int64, timeout time.Duration) (*api.VM, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return cl.WaitVM(ctx, name, func(vm *api.VM) (bool, error) {
		if vm == nil {
			return false, fmt.Errorf("vm %s was deleted", name)
		}
		st := vm.Status
		if st.StartSeq < seq {
			return false, nil
		}
		switch st.Phase {
		case api.PhaseFailed:
			msg := fmt.Sprintf("vm %s failed: %s", name, st.Message)
			if st.LogTail != "" {
				msg += "\n" + strings.TrimRight(st.LogTail, "\n")
			}
			return false, exitError{code: 1, msg: msg}
		case api.PhaseStopped:
			return false, fmt.Errorf("vm %s stopped: %s", name, dash(st.Message))
		case api.PhaseRunning:
			return vm.Spec.Image != api.ImageTiny || (st.Guest != nil && st.Guest.Healthy), nil
		}
		return false, nil
	})
}

func vmListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "list", Short: "List VMs", Args: cobra.NoArgs, Aliases: []string{"ls"},
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.outputClient()
			if err != nil {
				return err
			}
			vms, err := cl.ListVMs(cmd.Context())
			if err != nil {
				return err
			}
			if g.structured() {
				return g.emit(vms)
			}
			var rows [][]string
			for _, vm := range vms {
				rows = append(rows, []string{vm.Spec.Name, dash(vm.Node), phase(vm), api.FormatMiB(vm.Spec.MemoryMiB),
					fmt.Sprint(vm.Spec.CPUs), vm.Spec.IP, guestState(vm), age(vm.Spec.Created)})
			}
			table(os.Stdout, []string{"NAME", "NODE", "STATE", "MEMORY", "CPUS", "IP", "GUEST", "AGE"}, rows)
			return nil
		},
	}
}

func phase(vm api.VM) string {
	if vm.Spec.Deleting {
		return api.PhaseDeleting
	}
	return dash(vm.Status.Phase)
}

func guestState(vm api.VM) string {
	g := vm.Status.Guest
	switch {
	case vm.Status.Phase != api.PhaseRunning || g == nil:
		return "-"
	case g.Healthy:
		return "healthy"
	default:
		return "no answer"
	}
}

func vmShowCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "show NAME", Short: "Show a VM", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.outputClient()
			if err != nil {
				return err
			}
			vm, err := cl.GetVM(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return showVM(g, vm)
		},
	}
}

func showVM(g *globals, vm *api.VM) error {
	if g.structured() {
		return g.emit(vm)
	}
	s, st := vm.Spec, vm.Status
	rows := [][]string{
		{"name:", s.Name}, {"uuid:", s.UUID}, {"state:", phase(*vm)}, {"desired:", s.Power},
		{"node:", dash(vm.Node)}, {"memory:", api.FormatMiB(s.MemoryMiB)}, {"cpus:", fmt.Sprint(s.CPUs)},
		{"image:", s.Image}, {"ip:", s.IP}, {"mac:", s.MAC},
	}
	if s.DiskMiB > 0 {
		rows = append(rows, []string{"disk:", api.FormatMiB(s.DiskMiB)})
	}
	if s.Machine != "" {
		m := s.Machine
		if s.Boot != "" {
			m += " (kernel: " + s.Boot + ")"
		}
		rows = append(rows, []string{"machine:", m})
	}
	if st.PID > 0 {
		rows = append(rows, []string{"pid:", fmt.Sprint(st.PID)}, []string{"accel:", st.Accel})
		if st.QEMUVersion != "" {
			rows = append(rows, []string{"qemu:", st.QEMUVersion})
		}
	}
	if st.Endpoint != "" && st.Phase == api.PhaseRunning {
		rows = append(rows, []string{"http:", "http://" + st.Endpoint + "/"})
	}
	if gs := st.Guest; gs != nil && st.Phase == api.PhaseRunning {
		rows = append(rows, []string{"guest:", fmt.Sprintf("%s (boot id %s)", guestState(*vm), dash(gs.BootID))})
	}
	if st.Message != "" {
		rows = append(rows, []string{"message:", st.Message})
	}
	rows = append(rows, []string{"since:", age(st.Since)}, []string{"created:", s.Created.Format(time.RFC3339)})
	for _, r := range rows {
		fmt.Printf("%-9s %s\n", r[0], r[1])
	}
	if st.Phase == api.PhaseFailed && st.LogTail != "" {
		fmt.Printf("log tail:\n%s\n", strings.TrimRight(st.LogTail, "\n"))
	}
	return nil
}

func vmStartCmd(g *globals) *cobra.Command {
	var timeout time.Duration
	var noWait bool
	c := &cobra.Command{
		Use: "start NAME", Short: "Start a stopped or failed VM", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.outputClient()
			if err != nil {
				return err
			}
			vm, err := cl.StartVM(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if !noWait {
				if vm, err = waitRunning(cmd.Context(), cl, args[0], vm.Spec.StartSeq, timeout); err != nil {
					return err
				}
			}
			return showVM(g, vm)
		},
	}
	c.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "how long to wait for the VM to run")
	c.Flags().BoolVar(&noWait, "no-wait", false, "do not wait until the VM runs")
	return c
}

func vmStopCmd(g *globals) *cobra.Command {
	var req api.VMStopRequest
	var grace time.Duration
	var noWait bool
	c := &cobra.Command{
		Use: "stop NAME", Short: "Stop a VM (ACPI shutdown, then power off after --timeout)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.outputClient()
			if err != nil {
				return err
			}
			req.Timeout = grace.String()
			vm, err := cl.StopVM(cmd.Context(), args[0], req)
			if err != nil {
				return err
			}
			if !noWait {
				ctx, cancel := context.WithTimeout(cmd.Context(), grace+time.Minute)
				defer cancel()
				vm, err = cl.WaitVM(ctx, args[0], func(vm *api.VM) (bool, error) {
					if vm == nil {
						return true, nil
					}
					p := vm.Status.Phase
					return p == api.PhaseStopped || p == api.PhaseFailed, nil
				})
				if err != nil {
					return err
				}
			}
			return showVM(g, vm)
		},
	}
	c.Flags().BoolVar(&req.Force, "force", false, "power off at once, without asking the guest")
	c.Flags().DurationVar(&grace, "timeout", 30*time.Second, "how long the guest may take to shut down")
	c.Flags().BoolVar(&noWait, "no-wait", false, "do not wait until the VM has stopped")
	return c
}

func vmRestartCmd(g *globals) *cobra.Command {
	var req api.VMStopRequest
	var grace, timeout time.Duration
	c := &cobra.Command{
		Use: "restart NAME", Short: "Restart a VM: stop it, then start a fresh QEMU", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.outputClient()
			if err != nil {
				return err
			}
			req.Timeout = grace.String()
			vm, err := cl.RestartVM(cmd.Context(), args[0], req)
			if err != nil {
				return err
			}
			if vm, err = waitRunning(cmd.Context(), cl, args[0], vm.Spec.StartSeq, grace+timeout); err != nil {
				return err
			}
			return showVM(g, vm)
		},
	}
	c.Flags().BoolVar(&req.Force, "force", false, "power off at once, without asking the guest")
	c.Flags().DurationVar(&grace, "stop-timeout", 30*time.Second, "how long the guest may take to shut down")
	c.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "how long to wait for the VM to run again")
	return c
}

func vmDeleteCmd(g *globals) *cobra.Command {
	var noWait bool
	c := &cobra.Command{
		Use: "delete NAME", Short: "Delete a VM with its disk", Args: cobra.ExactArgs(1), Aliases: []string{"rm"},
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			if err := cl.DeleteVM(cmd.Context(), args[0]); err != nil {
				return err
			}
			if !noWait {
				ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Minute)
				defer cancel()
				if _, err := cl.WaitVM(ctx, args[0], func(vm *api.VM) (bool, error) { return vm == nil, nil }); err != nil {
					return err
				}
			}
			fmt.Printf("vm %s deleted\n", args[0])
			return nil
		},
	}
	c.Flags().BoolVar(&noWait, "no-wait", false, "do not wait until the VM is gone")
	return c
}

func vmConsoleCmd(g *globals) *cobra.Command {
	var follow bool
	var lines int
	c := &cobra.Command{
		Use: "console NAME", Short: "Show the VM's serial console (read-only); --follow streams it", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			return cl.Console(cmd.Context(), args[0], lines, follow, os.Stdout)
		},
	}
	c.Flags().BoolVarP(&follow, "follow", "f", false, "keep streaming new output until interrupted")
	c.Flags().IntVarP(&lines, "lines", "n", 100, "how many past lines to show")
	return c
}

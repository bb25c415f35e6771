package testbed

import (
	"bytes"
	"fmt"
	"os/exec"
	"strings"
)

// ControlPorts are the TCP ports of Ferry's control plane between hosts:
// etcd's client and peer ports and the API.
var ControlPorts = []int{2379, 2380, 7443}

const cutTable = "ferrycut"

// CutMigrationLink drops, in host i's namespace, every TCP segment to and
// from host j except the control plane's (ControlPorts): what a broken
// migration network looks like when the control network stays up. Packets
// vanish silently, as on a dead link (no reset). The guests' overlay
// (VXLAN, UDP) keeps working. RestoreMigrationLink undoes it; the rules go
// with the namespace at Down.
func (b *Bed) CutMigrationLink(i, j int) error {
	peer := b.Hosts[j].Addr
	ports := strings.Trim(strings.ReplaceAll(fmt.Sprint(ControlPorts), " ", ", "), "[]")
	script := fmt.Sprintf(`table inet %[1]s {
	chain in {
		type filter hook input priority 0; policy accept;
		ip saddr %[2]s tcp sport != { %[3]s } tcp dport != { %[3]s } drop
	}
	chain out {
		type filter hook output priority 0; policy accept;
		ip daddr %[2]s tcp sport != { %[3]s } tcp dport != { %[3]s } drop
	}
}
`, cutTable, peer, ports)
	cmd := exec.Command("ip", "netns", "exec", b.Hosts[i].NS, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("cutting %s from %s (nft): %v: %s", b.Hosts[i].Name, b.Hosts[j].Name, err, bytes.TrimSpace(out))
	}
	return nil
}

// RestoreMigrationLink removes what CutMigrationLink did in host i.
func (b *Bed) RestoreMigrationLink(i int) error {
	out, err := exec.Command("ip", "netns", "exec", b.Hosts[i].NS, "nft", "delete", "table", "inet", cutTable).CombinedOutput()
	if err != nil && !bytes.Contains(out, []byte("No such file")) {
		return fmt.Errorf("restoring %s's link (nft): %v: %s", b.Hosts[i].Name, err, bytes.TrimSpace(out))
	}
	return nil
}

package image

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/xi2/xz"
)

// Why the image carries the kernel twice: a bzImage decompresses itself
// inside the guest, and under TCG that took 5-7 of the tiny guest's 8-10 s
// boot (measured with QEMU 7.2 and 10.0 alike). QEMU boots an uncompressed
// ELF kernel directly through its PVH entry point (the kernel's
// XEN_ELFNOTE_PHYS32_ENTRY note, CONFIG_PVH), so the image build unpacks the
// kernel once on the host. The XZ decoder is github.com/xi2/xz, a port of
// XZ Embedded — the decoder the kernel itself uses — because the kernel
// compresses with the x86 BCJ filter, which the other Go XZ packages lack.

// xenElfNotePhys32Entry is the ELF note type of the PVH entry point.
const xenElfNotePhys32Entry = 18

// extractPVH returns the uncompressed kernel inside a bzImage, or an error
// saying why it cannot be booted through PVH.
func extractPVH(bz []byte) ([]byte, error) {
	if len(bz) < 0x250 || string(bz[0x202:0x206]) != "HdrS" {
		return nil, errors.New("not a bzImage (no HdrS header)")
	}
	if v := binary.LittleEndian.Uint16(bz[0x206:]); v < 0x208 {
		return nil, fmt.Errorf("boot protocol %#x has no payload fields", v)
	}
	setupSects := int(bz[0x1f1])
	if setupSects == 0 {
		setupSects = 4
	}
	off := (setupSects+1)*512 + int(binary.LittleEndian.Uint32(bz[0x248:]))
	n := int(binary.LittleEndian.Uint32(bz[0x24c:]))
	if off < 0 || n <= 0 || off+n > len(bz) {
		return nil, errors.New("payload outside the file")
	}
	payload := bz[off : off+n]
	var r io.Reader
	switch {
	case bytes.HasPrefix(payload, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		xr, err := xz.NewReader(bytes.NewReader(payload), 0)
		if err != nil {
			return nil, fmt.Errorf("xz payload: %w", err)
		}
		xr.Multistream(false) // the payload ends with its size, not another stream
		r = xr
	case bytes.HasPrefix(payload, []byte{0x1f, 0x8b}):
		gr, err := gzip.NewReader(bytes.NewReader(payload))
		if err != nil {
			return nil, fmt.Errorf("gzip payload: %w", err)
		}
		gr.Multistream(false)
		r = gr
	default:
		return nil, fmt.Errorf("payload compressed with a method the image builder does not unpack (magic % x)", payload[:min(6, len(payload))])
	}
	vmlinux, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("unpacking the kernel: %w", err)
	}
	ok, err := hasPVHEntry(vmlinux)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, errors.New("the kernel has no PVH entry point (built without CONFIG_PVH)")
	}
	return vmlinux, nil
}

// hasPVHEntry reports whether an ELF kernel carries the PVH entry note.
func hasPVHEntry(b []byte) (bool, error) {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return false, fmt.Errorf("unpacked kernel is not ELF: %w", err)
	}
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		data, err := io.ReadAll(p.Open())
		if err != nil {
			return false, err
		}
		for len(data) >= 12 {
			namesz := int(f.ByteOrder.Uint32(data[0:]))
			descsz := int(f.ByteOrder.Uint32(data[4:]))
			typ := f.ByteOrder.Uint32(data[8:])
			next := 12 + align4(namesz) + align4(descsz)
			if namesz < 0 || descsz < 0 || next > len(data) {
				break
			}
			name := string(bytes.TrimRight(data[12:12+namesz], "\x00"))
			if name == "Xen" && typ == xenElfNotePhys32Entry {
				return true, nil
			}
			data = data[next:]
		}
	}
	return false, nil
}

func align4(n int) int { return (n + 3) &^ 3 }

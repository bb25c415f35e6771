package main

import (
	"encoding/binary"
	"log"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

// watchdog pets /dev/watchdog (the emulated i6300esb) so the host can tell a
// hung guest from a live one. Petting can be switched off over HTTP to test
// the host's reaction.
type watchdog struct {
	mu  sync.Mutex
	f   *os.File
	pet bool
	err string
}

const wdiocSetTimeout = 0xc0045706 // _IOWR('W', 6, int)

func startWatchdog() *watchdog {
	w := &watchdog{pet: true}
	f, err := os.OpenFile("/dev/watchdog", os.O_WRONLY, 0)
	if err != nil {
		w.err = err.Error()
		return w
	}
	timeout := int32(30)
	syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), wdiocSetTimeout, uintptr(unsafe.Pointer(&timeout)))
	w.f = f
	go func() {
		for range time.Tick(5 * time.Second) {
			w.mu.Lock()
			if w.pet {
				f.Write([]byte("1"))
			}
			w.mu.Unlock()
		}
	}()
	f.Write([]byte("1"))
	return w
}

func (w *watchdog) setPetting(on bool) {
	w.mu.Lock()
	w.pet = on
	w.mu.Unlock()
}

func (w *watchdog) state() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.f == nil:
		return "absent: " + w.err
	case w.pet:
		return "petting"
	default:
		return "stopped"
	}
}

// watchPowerButton powers off when the ACPI power button is pressed, which is
// how QEMU's system_powerdown asks a guest to shut down gracefully.
func watchPowerButton() {
	var dev string
	for i := 0; i < 50 && dev == ""; i++ {
		names, _ := filepath.Glob("/sys/class/input/event*/device/name")
		for _, n := range names {
			b, _ := os.ReadFile(n)
			if strings.Contains(string(b), "Power Button") {
				dev = "/dev/input/" + filepath.Base(filepath.Dir(filepath.Dir(n)))
			}
		}
		if dev == "" {
			time.Sleep(100 * time.Millisecond)
		}
	}
	if dev == "" {
		log.Printf("no power button found; graceful shutdown unavailable")
		return
	}
	f, err := os.Open(dev)
	if err != nil {
		log.Printf("power button: %v", err)
		return
	}
	const evKey, keyPower = 1, 116
	buf := make([]byte, 24) // struct input_event on 64-bit
	for {
		if _, err := f.Read(buf); err != nil {
			return
		}
		typ := binary.LittleEndian.Uint16(buf[16:])
		code := binary.LittleEndian.Uint16(buf[18:])
		val := int32(binary.LittleEndian.Uint32(buf[20:]))
		if typ == evKey && code == keyPower && val == 1 {
			poweroff()
		}
	}
}

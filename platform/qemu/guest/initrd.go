package guest

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// initScript is the guest's /init (busybox sh, PID 1). Its arguments are
// what follows "--" on the kernel command line: the service command.
// Kernel parameters of the form NAME=value that the kernel does not know
// become its environment, and so the service's.
const initScript = `#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in $(cat /etc/modules); do insmod /lib/modules/$m || echo "jri: insmod $m failed"; done
i=0; while [ ! -e /sys/class/net/eth0 ] || [ ! -b /dev/vda ]; do i=$((i+1)); [ $i -gt 200 ] && break; usleep 10000; done
ip link set lo up
ip link set eth0 up
ip addr add ` + GuestIP + `/24 dev eth0
ip route add default via ` + Gateway + `
mkdir -p /data /tmp
if [ -b /dev/vda ]; then mount -t ext4 /dev/vda /data || echo "jri: cannot mount /data"; fi
echo "jri: booted"
if [ $# -gt 0 ]; then
	cd /data
	"$@" &
	pid=$!
	echo "jri: started $1 (pid $pid)"
	wait $pid
	echo "jri: $1 exited with status $?"
fi
sync
poweroff -f
`

// writeInitrd writes the initramfs: an uncompressed newc cpio archive.
func writeInitrd(path string, cfg Config, modDir string, mods, services []string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := &cpioWriter{w: bufio.NewWriterSize(f, 1<<20)}
	for _, d := range []string{"bin", "dev", "etc", "proc", "sys", "data", "tmp", "lib", "lib/modules"} {
		w.dir(d)
	}
	w.node("dev/console", 0o600|cpioChr, 5, 1)
	w.node("dev/null", 0o666|cpioChr, 1, 3)
	if err := w.fileFrom("bin/busybox", cfg.Busybox, 0o755); err != nil {
		return err
	}
	w.symlink("bin/sh", "busybox")
	w.file("init", []byte(initScript), 0o755)
	var list []string
	for _, m := range mods {
		b := filepath.Base(m)
		if err := w.fileFrom("lib/modules/"+b, filepath.Join(modDir, m), 0o644); err != nil {
			return err
		}
		list = append(list, b)
	}
	w.file("etc/modules", []byte(strings.Join(list, "\n")+"\n"), 0o644)
	for _, n := range services {
		if err := CheckServiceName(n); err != nil { // Build checked; this guards the boot
			return err
		}
		if err := w.fileFrom("bin/"+n, cfg.Services[n], 0o755); err != nil {
			return err
		}
	}
	w.trailer()
	if w.err == nil {
		w.err = w.w.Flush()
	}
	if cerr := f.Close(); w.err == nil {
		w.err = cerr
	}
	return w.err
}

const (
	cpioDir = 0o040000
	cpioReg = 0o100000
	cpioLnk = 0o120000
	cpioChr = 0o020000
)

// cpioWriter writes the "newc" format the kernel unpacks.
type cpioWriter struct {
	w   *bufio.Writer
	ino int
	n   int64
	err error
}

func (c *cpioWriter) entry(name string, mode, rmaj, rmin int, data []byte) {
	if c.err != nil {
		return
	}
	c.ino++
	nlink := 1
	if mode&0o170000 == cpioDir {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmaj, rmin, len(name)+1, 0)
	c.write([]byte(hdr))
	c.write([]byte(name + "\x00"))
	c.pad()
	c.write(data)
	c.pad()
}

func (c *cpioWriter) write(b []byte) {
	if c.err != nil {
		return
	}
	n, err := c.w.Write(b)
	c.n += int64(n)
	c.err = err
}

func (c *cpioWriter) pad() {
	if r := c.n % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}

func (c *cpioWriter) dir(name string)                      { c.entry(name, cpioDir|0o755, 0, 0, nil) }
func (c *cpioWriter) node(name string, mode, maj, min int) { c.entry(name, mode, maj, min, nil) }
func (c *cpioWriter) symlink(name, target string)          { c.entry(name, cpioLnk|0o777, 0, 0, []byte(target)) }
func (c *cpioWriter) file(name string, b []byte, perm int) {
	c.entry(name, cpioReg|perm, 0, 0, b)
}
func (c *cpioWriter) fileFrom(name, src string, perm int) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	c.file(name, b, perm)
	return nil
}
func (c *cpioWriter) trailer() { c.entry("TRAILER!!!", 0, 0, 0, nil) }

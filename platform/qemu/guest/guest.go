// Package guest builds the small bootable guest images the qemu platform
// runs, from what Debian packages put on the host — nothing is downloaded:
//
//   - the kernel (linux-image-amd64: /boot/vmlinuz-V) and the virtio, ext4
//     and balloon modules it needs, found with their dependencies in
//     /lib/modules/V/modules.dep;
//   - busybox-static as the guest's shell and tools;
//   - the service binaries, static (built with CGO_ENABLED=0), in /bin;
//   - an /init that loads the modules, brings up eth0 as 10.0.2.15/24
//     (QEMU user-mode networking's guest address, so every guest and its
//     clones have the same internal identity), mounts the data disk /dev/vda
//     on /data and runs the command given on the kernel command line.
//
// An image is a directory holding vmlinuz, initrd (an uncompressed newc
// cpio archive written here, so no cpio tool is needed), disk.qcow2 (an
// empty ext4 data disk that instances get copy-on-write overlays on) and
// image.json. Images are cached by a hash of all their inputs: building an
// image that exists returns it at once.
package guest

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/justrunit/justrunit"
)

// DefaultModules are the kernel modules an image loads at boot, before
// their dependencies are added.
var DefaultModules = []string{"virtio_pci", "virtio_net", "virtio_blk", "virtio_balloon", "crc32c_generic", "ext4"}

// DefaultDiskMiB is the size of the data disk.
const DefaultDiskMiB = 256

// Guest network identity inside QEMU's user-mode network: every instance
// and every clone has it; clones are told apart only by their NAT port.
const (
	GuestIP = "10.0.2.15"
	Gateway = "10.0.2.2"
)

// Config is what to build an image from. Zero fields take the defaults.
type Config struct {
	// CacheDir is where images are kept, one directory per input hash.
	CacheDir string
	// KernelVersion picks /boot/vmlinuz-V and /lib/modules/V; default:
	// the newest version that has both.
	KernelVersion string
	// Busybox is the static busybox binary (default: busybox on $PATH,
	// which busybox-static installs).
	Busybox string
	// Services maps a name in the guest's /bin to a static binary on the
	// host.
	Services map[string]string
	// Modules are the kernel modules to load (default DefaultModules).
	Modules []string
	// DiskMiB is the data disk's size (default DefaultDiskMiB).
	DiskMiB int
}

// Image is a built guest image.
type Image struct {
	Dir           string   `json:"-"`
	Hash          string   `json:"hash"`
	KernelVersion string   `json:"kernel_version"`
	Services      []string `json:"services"`
	Modules       []string `json:"modules"`
	DiskMiB       int      `json:"disk_mib"`
}

// Kernel is the image's kernel.
func (im *Image) Kernel() string { return filepath.Join(im.Dir, "vmlinuz") }

// Initrd is the image's initramfs.
func (im *Image) Initrd() string { return filepath.Join(im.Dir, "initrd") }

// Disk is the image's empty data disk (qcow2); instances use overlays on it.
func (im *Image) Disk() string { return filepath.Join(im.Dir, "disk.qcow2") }

// Load opens the image in dir.
func Load(dir string) (*Image, error) {
	b, err := os.ReadFile(filepath.Join(dir, "image.json"))
	if err != nil {
		return nil, fmt.Errorf("load guest image: %w", err)
	}
	im := &Image{}
	if err := json.Unmarshal(b, im); err != nil {
		return nil, fmt.Errorf("load guest image %s: %w", dir, err)
	}
	// Resolve links: overlays name their backing file by this path, and
	// must keep pointing at this image when a link moves to a newer one.
	if im.Dir, err = filepath.EvalSymlinks(dir); err != nil {
		return nil, fmt.Errorf("load guest image: %w", err)
	}
	im.Dir, _ = filepath.Abs(im.Dir)
	return im, nil
}

// KernelVersions lists the kernel versions that have both /boot/vmlinuz-V
// and /lib/modules/V/modules.dep, newest last.
func KernelVersions() []string {
	ents, _ := os.ReadDir("/lib/modules")
	var out []string
	for _, e := range ents {
		v := e.Name()
		if fileExists("/boot/vmlinuz-"+v) && fileExists(filepath.Join("/lib/modules", v, "modules.dep")) {
			out = append(out, v)
		}
	}
	sort.Slice(out, func(i, j int) bool { return versionLess(out[i], out[j]) })
	return out
}

func versionLess(a, b string) bool {
	pa, pb := strings.FieldsFunc(a, notDigit), strings.FieldsFunc(b, notDigit)
	for i := 0; i < len(pa) && i < len(pb); i++ {
		if len(pa[i]) != len(pb[i]) {
			return len(pa[i]) < len(pb[i])
		}
		if pa[i] != pb[i] {
			return pa[i] < pb[i]
		}
	}
	return len(pa) < len(pb)
}

func notDigit(r rune) bool { return r < '0' || r > '9' }

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// Requirements says what is missing on this machine to build and run
// images, as an error naming the Debian packages to install; nil when
// everything is there.
func Requirements() error {
	var missing []string
	if len(KernelVersions()) == 0 {
		missing = append(missing, "linux-image-amd64 (a kernel in /boot with its modules)")
	}
	for tool, pkg := range map[string]string{"busybox": "busybox-static", "qemu-img": "qemu-utils", "mkfs.ext4": "e2fsprogs", "qemu-system-x86_64": "qemu-system-x86"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, pkg+" ("+tool+")")
		}
	}
	if len(missing) == 0 {
		return nil
	}
	sort.Strings(missing)
	return fmt.Errorf("guest images need: apt-get install %s", strings.Join(missing, ", "))
}

// bootCommands are the commands the guest's /init runs while it boots
// (see initScript) and the shell builtins it uses: a service installed as
// /bin/NAME under one of these names would run in their place, or stop
// the guest from booting.
var bootCommands = []string{
	"[", "break", "cat", "cd", "echo", "export", "insmod", "ip", "mkdir",
	"mount", "poweroff", "sync", "test", "usleep", "wait",
}

// CheckServiceName says why name cannot be a service's name in an image
// (the guest's /bin/NAME), or returns nil. The error, of category
// justrunit.ErrInvalid, names the --service flag image build sets it with.
func CheckServiceName(name string) error {
	const field = "--service"
	val := name + "=..."
	switch {
	case name == "" || strings.ContainsAny(name, "/ \t\n\x00"):
		return justrunit.Invalid(field, val, "a service name is a file name in the guest's /bin: not empty, no '/' or spaces")
	case name == "." || name == "..":
		return justrunit.Invalid(field, val, "%q is not a file name: the service would replace the guest's /bin or its root", name)
	case name == "sh" || name == "busybox":
		return justrunit.Invalid(field, val, "/bin/%s is busybox, the guest's shell and tools that its /init boots with; pick another name", name)
	case slices.Contains(bootCommands, name):
		return justrunit.Invalid(field, val, "%q is a command the guest's /init runs while booting: /bin/%s would run in its place; pick another name", name, name)
	}
	return nil
}

// Build builds the image cfg describes into cfg.CacheDir, or returns the
// cached one with the same inputs.
func Build(ctx context.Context, cfg Config) (*Image, error) {
	if cfg.CacheDir == "" {
		return nil, errors.New("build guest image: no cache directory")
	}
	for n := range cfg.Services {
		if err := CheckServiceName(n); err != nil {
			return nil, fmt.Errorf("build guest image: %w", err)
		}
	}
	if cfg.KernelVersion == "" {
		vs := KernelVersions()
		if len(vs) == 0 {
			return nil, fmt.Errorf("build guest image: %w", Requirements())
		}
		cfg.KernelVersion = vs[len(vs)-1]
	}
	if cfg.Busybox == "" {
		p, err := exec.LookPath("busybox")
		if err != nil {
			return nil, fmt.Errorf("build guest image: busybox not found (apt-get install busybox-static): %w", err)
		}
		cfg.Busybox = p
	}
	if len(cfg.Modules) == 0 {
		cfg.Modules = DefaultModules
	}
	if cfg.DiskMiB <= 0 {
		cfg.DiskMiB = DefaultDiskMiB
	}
	modDir := filepath.Join("/lib/modules", cfg.KernelVersion)
	mods, err := resolveModules(modDir, cfg.Modules)
	if err != nil {
		return nil, fmt.Errorf("build guest image: %w", err)
	}
	names := make([]string, 0, len(cfg.Services))
	for n := range cfg.Services {
		names = append(names, n)
	}
	sort.Strings(names)

	// The hash covers every input byte, so a rebuilt service or a kernel
	// update makes a new image and an unchanged input reuses the old one.
	h := sha256.New()
	fmt.Fprintf(h, "guest-image v1\n%s\n%d\n%s\n", cfg.KernelVersion, cfg.DiskMiB, initScript)
	hashFile := func(p string) error {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		fmt.Fprintf(h, "file %s\n", filepath.Base(p))
		_, err = io.Copy(h, f)
		return err
	}
	inputs := []string{"/boot/vmlinuz-" + cfg.KernelVersion, cfg.Busybox}
	for _, m := range mods {
		inputs = append(inputs, filepath.Join(modDir, m))
	}
	for _, n := range names {
		fmt.Fprintf(h, "service %s\n", n)
		inputs = append(inputs, cfg.Services[n])
	}
	for _, p := range inputs {
		if err := hashFile(p); err != nil {
			return nil, fmt.Errorf("build guest image: %w", err)
		}
	}
	sum := hex.EncodeToString(h.Sum(nil))[:16]
	dir := filepath.Join(cfg.CacheDir, "image-"+sum)
	if im, err := Load(dir); err == nil {
		return im, nil
	}
	if err := os.MkdirAll(cfg.CacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("build guest image: %w", err)
	}
	tmp, err := os.MkdirTemp(cfg.CacheDir, ".building-")
	if err != nil {
		return nil, fmt.Errorf("build guest image: %w", err)
	}
	defer os.RemoveAll(tmp)

	im := &Image{Hash: sum, KernelVersion: cfg.KernelVersion, Services: names, DiskMiB: cfg.DiskMiB}
	for _, m := range mods {
		im.Modules = append(im.Modules, filepath.Base(m))
	}
	if err := copyFile("/boot/vmlinuz-"+cfg.KernelVersion, filepath.Join(tmp, "vmlinuz")); err != nil {
		return nil, fmt.Errorf("build guest image: %w", err)
	}
	if err := writeInitrd(filepath.Join(tmp, "initrd"), cfg, modDir, mods, names); err != nil {
		return nil, fmt.Errorf("build guest image: initrd: %w", err)
	}
	if err := makeDisk(ctx, filepath.Join(tmp, "disk.qcow2"), cfg.DiskMiB, ""); err != nil {
		return nil, fmt.Errorf("build guest image: %w", err)
	}
	b, _ := json.MarshalIndent(im, "", "  ")
	if err := os.WriteFile(filepath.Join(tmp, "image.json"), b, 0o644); err != nil {
		return nil, fmt.Errorf("build guest image: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		if im, lerr := Load(dir); lerr == nil { // built concurrently
			return im, nil
		}
		return nil, fmt.Errorf("build guest image: %w", err)
	}
	return Load(dir)
}

// MakeDisk writes a qcow2 disk of sizeMiB holding an ext4 file system,
// filled with the contents of dir when dir is not empty.
func MakeDisk(ctx context.Context, path string, sizeMiB int, dir string) error {
	return makeDisk(ctx, path, sizeMiB, dir)
}

func makeDisk(ctx context.Context, path string, sizeMiB int, dir string) error {
	raw := path + ".raw"
	defer os.Remove(raw)
	f, err := os.Create(raw)
	if err != nil {
		return err
	}
	if err := f.Truncate(int64(sizeMiB) << 20); err != nil {
		f.Close()
		return err
	}
	f.Close()
	// Inode tables and journal are initialised now so that a guest does not
	// zero them in the background (which would dirty memory and disk while
	// it is being cloned).
	args := []string{"-q", "-F", "-L", "data", "-E", "lazy_itable_init=0,lazy_journal_init=0", "-m", "0"}
	if dir != "" {
		args = append(args, "-d", dir)
	}
	args = append(args, raw)
	if out, err := exec.CommandContext(ctx, "mkfs.ext4", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.ext4: %v: %s", err, out)
	}
	if out, err := exec.CommandContext(ctx, "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, path).CombinedOutput(); err != nil {
		return fmt.Errorf("qemu-img convert: %v: %s", err, out)
	}
	return nil
}

// resolveModules returns the module files (relative to modDir) for want
// and their dependencies, dependencies first.
func resolveModules(modDir string, want []string) ([]string, error) {
	f, err := os.Open(filepath.Join(modDir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	deps := map[string][]string{} // module name → dependency files
	file := map[string]string{}   // module name → its file
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		mod, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		n := modName(mod)
		file[n] = mod
		deps[n] = strings.Fields(rest)
	}
	var out []string
	seen := map[string]bool{}
	var visit func(n string) error
	visit = func(n string) error {
		if seen[n] {
			return nil
		}
		seen[n] = true
		p, ok := file[n]
		if !ok {
			// Built into the kernel: nothing to load.
			if fileExists(filepath.Join(modDir, "modules.builtin")) && builtin(modDir, n) {
				return nil
			}
			return fmt.Errorf("kernel module %s not found in %s", n, modDir)
		}
		// modules.dep lists all transitive dependencies; load them in
		// reverse (deepest first).
		ds := deps[n]
		for i := len(ds) - 1; i >= 0; i-- {
			if err := visit(modName(ds[i])); err != nil {
				return err
			}
		}
		if strings.HasSuffix(p, ".xz") || strings.HasSuffix(p, ".zst") || strings.HasSuffix(p, ".gz") {
			return fmt.Errorf("kernel module %s is compressed (%s); busybox insmod needs plain .ko files", n, p)
		}
		out = append(out, p)
		return nil
	}
	for _, w := range want {
		if err := visit(strings.ReplaceAll(w, "-", "_")); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func builtin(modDir, n string) bool {
	b, _ := os.ReadFile(filepath.Join(modDir, "modules.builtin"))
	for _, l := range strings.Split(string(b), "\n") {
		if modName(l) == n {
			return true
		}
	}
	return false
}

func modName(p string) string {
	b := filepath.Base(p)
	if i := strings.Index(b, ".ko"); i >= 0 {
		b = b[:i]
	}
	return strings.ReplaceAll(b, "-", "_")
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// GoBuild builds the Go main package pkg as a static binary at out
// (CGO_ENABLED=0, -trimpath so that an unchanged source gives the same
// bytes and the image cache hits), running the go tool in dir.
func GoBuild(ctx context.Context, dir, pkg, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", out, pkg)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %v: %s", pkg, err, b)
	}
	return nil
}

package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/internal/cgroup"
	"github.com/justrunit/justrunit/platform/qemu/guest"
)

// Check tries on this machine what the qemu platform needs: the Debian
// packages guests are built and run from, the accelerator, a platform
// with a state directory made under dir, a cgroup made, limited, frozen
// and removed as each VM's is, and the guest image at image (the one
// Launch boots by default). Everything it makes is removed before it
// returns. Without root only the first checks run.
func Check(ctx context.Context, dir, image string) (out []justrunit.Check) {
	// out is a named result: the deferred clean-up check below is added
	// after the return statements have run, and must still be returned.
	add := func(c justrunit.Check) { out = append(out, c) }
	root := os.Geteuid() == 0
	var rootErr error
	if !root {
		rootErr = errors.New("not root")
	}
	add(justrunit.NewCheck("root", fmt.Sprintf("uid %d", os.Geteuid()), rootErr, "run as root (each VM runs in a cgroup)"))
	add(justrunit.NewCheck("packages", "qemu-system-x86, qemu-utils, linux-image-amd64, busybox-static, e2fsprogs", guest.Requirements(), "install the packages named"))

	accel, why := AutoAccel()
	add(justrunit.Check{Name: "accelerator", OK: accel == "kvm", Optional: true, Detail: accel + ": " + why})
	if !root {
		return out
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		add(justrunit.NewCheck("state directory", dir, err, "make it writable, or pick another with --data-dir"))
		return out
	}
	sd, err := os.MkdirTemp(dir, "check-")
	if err != nil {
		add(justrunit.NewCheck("state directory", dir, err, "make it writable, or pick another with --data-dir"))
		return out
	}
	defer os.RemoveAll(sd)
	p, err := New(Options{StateDir: sd, Image: image})
	if err != nil {
		add(justrunit.NewCheck("platform", "", err, "see the error"))
		return out
	}
	defer func() {
		if err := p.Close(); err != nil {
			add(justrunit.NewCheck("clean-up", "", err, "justrunit platform gc --platform qemu"))
		}
	}()
	method := "pre-copy live migration: both sides keep running with the same memory"
	if p.CloneMethod() == "stop-and-copy" {
		method = "stop-and-copy: the source pauses while its memory is copied (QEMU 7.2's TCG can miss guest writes during pre-copy)"
	}
	add(justrunit.Check{Name: "clone mode", OK: true, Optional: true, Detail: "live, by " + method})

	found, err := cgroup.Probe(p.scope+"/check", fmt.Sprint(onlineCPUs()[0]))
	add(justrunit.NewCheck("cgroups", found, err, cgroup.ProbeFix))
	add(cgroup.CPUTimeCheck(p.cg, err == nil, p.noCPUAcct, "a VM"))

	img, err := guest.Load(image)
	detail := image
	if err == nil {
		detail = fmt.Sprintf("%s: kernel %s, services %v", img.Dir, img.KernelVersion, img.Services)
	}
	add(justrunit.NewCheck("guest image", detail, err, "build one: justrunit image build --service NAME=STATIC_BINARY (or --test-server)"))
	return out
}

// AutoAccel is the accelerator Options.Accel "auto" picks here ("kvm" or
// "tcg"), and why.
func AutoAccel() (string, string) {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return "tcg", fmt.Sprintf("%v: guests run under software emulation, several times slower", err)
	}
	f.Close()
	if _, err := os.Stat("/sys/module/kvm_pvm"); err == nil {
		return "tcg", "/dev/kvm is kvm_pvm, which runs only PVM-enabled guest kernels: guests run under software emulation"
	}
	return "kvm", "/dev/kvm"
}

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/platform/qemu/guest"
)

func init() { addCommand(newImageCmd) }

// guestServerPkg is the guest test service built into images by --test-server.
const guestServerPkg = "github.com/justrunit/justrunit/internal/guestserver"

// qemuImageLink is where the qemu platform looks for its default image.
func qemuImageLink(g *globals) string { return filepath.Join(platformStateDir(g, "qemu"), "image") }

func newImageCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Build guest images for the qemu platform",
	}
	cmd.AddCommand(newImageBuildCmd(g))
	return cmd
}

func newImageBuildCmd(g *globals) *cobra.Command {
	var (
		services   []string
		testServer bool
		out        string
		kernel     string
		diskMiB    int
		asJSON     bool
		noLink     bool
	)
	cmd := &cobra.Command{
		Use:   "build",
		Short: "Build a bootable guest (kernel, initramfs, data disk) from Debian packages and static binaries",
		Long: `Build a small guest image for the qemu platform from what Debian packages installed
on this machine — nothing is downloaded: the kernel of linux-image-amd64 and its
virtio, ext4 and balloon modules, busybox-static, and the static service binaries
given with --service (build Go services with CGO_ENABLED=0).

The image is a directory image-<hash> under --out holding vmlinuz, initrd, an
empty ext4 data disk (disk.qcow2; each instance gets a copy-on-write overlay on it,
mounted at /data) and image.json. The hash covers every input, so building again
with the same inputs returns the cached image at once.

The guest's init loads the modules, sets eth0 to 10.0.2.15/24 via 10.0.2.2 (QEMU
user networking; every instance and clone has this identity inside), mounts /data
and runs the instance's command (InstanceSpec.Command, e.g. /bin/NAME -addr :8080).

Unless --no-link is given, <data-dir>/platform/qemu/image is pointed at the new
image: it is the image the qemu platform boots by default.

Needs: linux-image-amd64, busybox-static, qemu-utils (qemu-img), e2fsprogs (mkfs.ext4).`,
		Example: `  # the built-in test service (counter, files, CPU work), built with the go tool
  justrunit image build --test-server

  # your own static services
  CGO_ENABLED=0 go build -o /tmp/app ./examples/auction/app
  justrunit image build --service app=/tmp/app --out /var/lib/justrunit/images`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				out = filepath.Join(platformStateDir(g, "qemu"), "images")
			}
			cfg := guest.Config{CacheDir: out, KernelVersion: kernel, DiskMiB: diskMiB, Services: map[string]string{}}
			for i, s := range services {
				name, path, ok := strings.Cut(s, "=")
				if !ok || name == "" || path == "" {
					return justrunit.Invalid(fmt.Sprintf("--service[%d]", i), s, "want NAME=PATH")
				}
				if _, err := os.Stat(path); err != nil {
					return justrunit.Invalid(fmt.Sprintf("--service[%d]", i), s, "%v", err)
				}
				cfg.Services[name] = path
			}
			if testServer {
				bin := filepath.Join(out, "guestserver")
				if err := os.MkdirAll(out, 0o755); err != nil {
					return err
				}
				if err := guest.GoBuild(cmd.Context(), ".", guestServerPkg, bin); err != nil {
					return fmt.Errorf("image build --test-server (run it from the repository): %w", err)
				}
				cfg.Services["guestserver"] = bin
			}
			if len(cfg.Services) == 0 {
				return justrunit.Invalid("--service", nil, "give at least one --service NAME=PATH or --test-server")
			}
			im, err := buildImage(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			if !noLink {
				if err := linkImage(im.Dir, qemuImageLink(g)); err != nil {
					return err
				}
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(struct {
					Dir string `json:"dir"`
					*guest.Image
				}{im.Dir, im})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s\n  kernel %s, services %s, data disk %d MiB\n",
				im.Dir, im.KernelVersion, strings.Join(im.Services, ", "), im.DiskMiB)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&services, "service", nil, "NAME=PATH: put the static binary PATH in the guest as /bin/NAME (repeatable)")
	f.BoolVar(&testServer, "test-server", false, "add the built-in guest test server as /bin/guestserver (needs the go tool and this repository)")
	f.StringVar(&out, "out", "", "image cache directory (default <data-dir>/platform/qemu/images)")
	f.StringVar(&kernel, "kernel", "", "kernel version in /boot and /lib/modules (default: the newest)")
	f.IntVar(&diskMiB, "disk-mib", guest.DefaultDiskMiB, "size of the data disk")
	f.BoolVar(&asJSON, "json", false, "print the image as JSON")
	f.BoolVar(&noLink, "no-link", false, "do not make this the qemu platform's default image")
	return cmd
}

func buildImage(ctx context.Context, cfg guest.Config) (*guest.Image, error) {
	if err := guest.Requirements(); err != nil {
		return nil, fmt.Errorf("image build: %w", err)
	}
	im, err := guest.Build(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("image build: %w", err)
	}
	return im, nil
}

// linkImage points link at dir, replacing an older link atomically.
func linkImage(dir, link string) error {
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		return err
	}
	tmp := link + ".new"
	_ = os.Remove(tmp)
	if err := os.Symlink(dir, tmp); err != nil {
		return err
	}
	return os.Rename(tmp, link)
}

// Package v2guest holds no code of its own. Its test runs the tests of the
// packages that drive cgroups — internal/cgroup and platform/local — inside
// a QEMU guest whose only cgroup hierarchy is v2, as on most users'
// machines: the development and CI machines mount the resource controllers
// under cgroup v1, so without it the v2 paths would never run. It boots the
// guest a second time on cgroup v1 for what this machine cannot run on v1
// either: live clones, since criu works with the guest's kernel (Debian's)
// and not with this machine's.
//
// It also runs siterun's TestLiveCloneStudy, a whole study of the auction
// example's app tier on live clones.
//
// The guest is an image from platform/qemu/guest: Debian's kernel with the
// modules the local platform and criu need (overlay, veth, nf_tables NAT,
// socket diagnostics), busybox, criu with its shared libraries, and the
// packages' test binaries, the test server and the auction example, built
// static. It runs under
// KVM where /dev/kvm runs stock kernels and under TCG elsewhere.
package v2guest

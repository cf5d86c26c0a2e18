package local

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"

	"github.com/justrunit/justrunit/internal/cgroup"
)

// startShim starts the shim (this binary, re-executed) for cfg, puts it in
// g before it runs anything else, and returns once the shim has exec'd the
// command, or with the shim's error when it could not.
func startShim(cfg shimConfig, log *os.File, cloneflags uintptr, g *cgroup.Group) (*exec.Cmd, error) {
	b, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	gateR, gateW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer gateW.Close()
	errR, errW, err := os.Pipe()
	if err != nil {
		gateR.Close()
		return nil, err
	}
	defer errR.Close()
	cmd := exec.Command("/proc/self/exe")
	cmd.Args = []string{"justrunit-shim"}
	cmd.Env = []string{shimEnv + "=" + string(b)}
	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr = log, log
	cmd.ExtraFiles = []*os.File{gateR, errW}
	// Its own session (and so process group), so a terminal's ^C reaches
	// the platform only (the platform decides when instances stop), and a
	// tree criu dumps has its session leader inside (see criu.go).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Cloneflags: cloneflags}
	err = cmd.Start()
	gateR.Close()
	errW.Close()
	if err != nil {
		return nil, fmt.Errorf("start: %w", err)
	}
	if err := g.AddProc(cmd.Process.Pid); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, err
	}
	if _, err := gateW.Write([]byte{1}); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("start: %w", err)
	}
	msg, _ := io.ReadAll(errR)
	if len(msg) > 0 {
		_ = cmd.Wait()
		return nil, errors.New(string(msg))
	}
	return cmd, nil
}

package proxybench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"syscall"
	"time"

	"github.com/justrunit/justrunit/proxy/httpproxy"
)

// inProxy is an in-proxy under test, in this process or another.
type inProxy interface {
	url() string
	// stop stops the proxy and returns its statistics.
	stop() (httpproxy.InStats, error)
}

type localInProxy struct {
	p    *httpproxy.InProxy
	addr string
}

func startLocalInProxy(ctx context.Context, online, clone string) (*localInProxy, error) {
	p, err := httpproxy.NewInProxy(httpproxy.InConfig{Online: mustParse(online)})
	if err != nil {
		return nil, err
	}
	addr, err := p.Start(ctx, "127.0.0.1:0")
	if err != nil {
		p.Close()
		return nil, err
	}
	if clone != "" {
		if err := p.AddClone(ctx, "clone", mustParse(clone)); err != nil {
			p.Close()
			return nil, err
		}
	}
	return &localInProxy{p: p, addr: addr.String()}, nil
}

func (l *localInProxy) url() string { return "http://" + l.addr }

func (l *localInProxy) stop() (httpproxy.InStats, error) {
	st := l.p.Stats()
	return st, l.p.Close()
}

// childInProxy is an in-proxy run as a command (justrunit proxy in).
type childInProxy struct{ *child }

func startChildInProxy(ctx context.Context, argv []string, online, clone string) (*childInProxy, error) {
	args := append(append([]string(nil), argv...), "--listen", "127.0.0.1:0", "--online", online, "--log-level", "warn")
	if clone != "" {
		args = append(args, "--clone", "clone="+clone)
	}
	c, err := startChild(ctx, "in-proxy", args)
	if err != nil {
		return nil, err
	}
	return &childInProxy{c}, nil
}

func (c *childInProxy) url() string { return "http://" + c.addr }

// stop stops the in-proxy and reads the final statistics it prints.
func (c *childInProxy) stop() (httpproxy.InStats, error) {
	var st httpproxy.InStats
	out, err := c.child.stop()
	if jerr := json.Unmarshal([]byte(out), &st); jerr != nil {
		return st, errors.Join(fmt.Errorf("in-proxy final statistics: %w (%q)", jerr, out), err)
	}
	return st, nil
}

// child is a program the benchmark runs in its own process. Once it
// accepts connections it prints {"listen": "host:port"} as its first line
// of output; on SIGTERM it stops, and what it prints then is stop's result.
type child struct {
	what   string
	argv   []string
	cmd    *exec.Cmd
	out    *bufio.Reader
	stderr *limitedBuffer
	addr   string
}

// startChild runs argv and waits (10 s at most) for its first line.
func startChild(ctx context.Context, what string, argv []string) (*child, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	// Its own process group, so that a Ctrl-C at the terminal reaches
	// the benchmark alone, which stops its children in order; and killed
	// with the benchmark, should that be killed outright. (Pdeathsig
	// follows the thread that started the child; Go ends a thread only
	// under a goroutine that exits locked to it, which none here does.)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	c := &child{what: what, argv: argv, cmd: cmd, out: bufio.NewReader(stdout), stderr: &limitedBuffer{}}
	cmd.Stderr = c.stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s %v: %w", what, argv, err)
	}
	type line struct {
		s   string
		err error
	}
	first := make(chan line, 1)
	go func() {
		s, err := c.out.ReadString('\n')
		first <- line{s, err}
	}()
	kill := func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
	}
	select {
	case l := <-first:
		var ready struct {
			Listen string `json:"listen"`
		}
		if l.err != nil || json.Unmarshal([]byte(l.s), &ready) != nil || ready.Listen == "" {
			kill()
			return nil, fmt.Errorf("%s %v did not start: %q %v; stderr: %s", what, argv, l.s, l.err, c.stderr.String())
		}
		c.addr = ready.Listen
	case <-time.After(10 * time.Second):
		kill()
		return nil, fmt.Errorf("%s %v: not ready after 10s; stderr: %s", what, argv, c.stderr.String())
	case <-ctx.Done():
		kill()
		return nil, ctx.Err()
	}
	return c, nil
}

// stop sends SIGTERM (SIGKILL to the process group after 15 s) and returns
// what the child printed after its first line.
func (c *child) stop() (string, error) {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	lines := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(c.out)
		lines <- string(b)
	}()
	var out string
	select {
	case out = <-lines:
	case <-time.After(15 * time.Second):
		_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		out = <-lines
	}
	if err := c.cmd.Wait(); err != nil {
		return out, fmt.Errorf("%s %v: %w; stderr: %s", c.what, c.argv, err, c.stderr.String())
	}
	return out, nil
}

// limitedBuffer keeps the first 4 KiB written to it.
type limitedBuffer struct{ b []byte }

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := 4096 - len(l.b); room > 0 {
		l.b = append(l.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (l *limitedBuffer) String() string { return string(l.b) }

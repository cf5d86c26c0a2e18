package proxybench

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestMain lets this test binary be an UpstreamCommand: with
// PROXYBENCH_UPSTREAM set it serves an upstream as "justrunit bench
// upstream" does, instead of running the tests.
//
// With PROXYBENCH_PARENT set it plays a benchmark instead: it starts such
// an upstream as its child, prints the child's pid and waits to be killed.
func TestMain(m *testing.M) {
	if os.Getenv("PROXYBENCH_PARENT") == "1" {
		os.Setenv("PROXYBENCH_PARENT", "")
		os.Setenv("PROXYBENCH_UPSTREAM", "1")
		u, err := startChildUpstream(context.Background(), []string{os.Args[0]}, time.Millisecond, 10, ClassNormal, 0)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println(u.c.cmd.Process.Pid)
		time.Sleep(time.Minute)
		os.Exit(1)
	}
	if os.Getenv("PROXYBENCH_UPSTREAM") != "1" {
		os.Exit(m.Run())
	}
	fs := flag.NewFlagSet("upstream", flag.ExitOnError)
	delay := fs.Duration("delay", time.Millisecond, "")
	body := fs.Int("body", 1024, "")
	nice := fs.Int("nice", 0, "")
	idle := fs.Bool("idle", false, "")
	_ = fs.Parse(os.Args[1:])
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := ServeUpstream(ctx, *delay, *body, *idle, *nice, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// TestChildUpstream runs a clone upstream in its own process in each
// scheduling class: it answers like an in-process one, every thread is in
// that class (at that nice value), and Close stops the process.
func TestChildUpstream(t *testing.T) {
	for _, class := range []string{ClassIdle, ClassNormal} {
		t.Run(class, func(t *testing.T) { testChildUpstream(t, class) })
	}
}

func testChildUpstream(t *testing.T, class string) {
	t.Setenv("PROXYBENCH_UPSTREAM", "1")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	u, err := startChildUpstream(ctx, []string{os.Args[0]}, 5*time.Millisecond, 100, class, DefaultCloneNice)
	if err != nil {
		t.Fatal(err)
	}
	pid := u.c.cmd.Process.Pid
	closed := false
	defer func() {
		if !closed {
			u.Close()
		}
	}()

	start := time.Now()
	resp, err := http.Get(u.base() + "/item")
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || len(b) != 100 {
		t.Fatalf("GET = %d, %d bytes, %v; want 200 with 100 bytes", resp.StatusCode, len(b), err)
	}
	if d := time.Since(start); d < 5*time.Millisecond {
		t.Errorf("answered after %v, want ≥ 5ms", d)
	}

	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
	if err != nil || len(tasks) == 0 {
		t.Fatalf("threads of %d: %v %v", pid, tasks, err)
	}
	for _, f := range tasks {
		stat, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		// Fields after the command (which ends with ')'): state is
		// field 3, nice field 19, policy field 41.
		fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		nice, _ := strconv.Atoi(fields[16])
		policy, _ := strconv.Atoi(fields[38])
		switch {
		case class == ClassIdle && policy != unix.SCHED_IDLE:
			t.Errorf("%s: scheduling policy %d, want SCHED_IDLE (%d)", f, policy, unix.SCHED_IDLE)
		case class == ClassNormal && (policy != unix.SCHED_NORMAL || nice != DefaultCloneNice):
			t.Errorf("%s: scheduling policy %d at nice %d, want SCHED_NORMAL (%d) at %d", f, policy, nice, unix.SCHED_NORMAL, DefaultCloneNice)
		}
	}

	if err := u.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	closed = true
	if err := syscall.Kill(pid, 0); err == nil {
		t.Errorf("process %d still exists after Close", pid)
	}
}

// TestChildUpstreamBadCommand: a command that never prints where it
// listens is an error naming it, and leaves no process behind.
func TestChildUpstreamBadCommand(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := startChildUpstream(ctx, []string{"/bin/sh", "-c", "echo not json", "sh"}, time.Millisecond, 10, ClassNormal, 0)
	if err == nil || !strings.Contains(err.Error(), "did not start") {
		t.Fatalf("err = %v, want one saying the upstream did not start", err)
	}
}

// TestChildKilledWithBenchmark: a benchmark killed outright (SIGKILL, no
// chance to stop its children) takes its child processes with it.
func TestChildKilledWithBenchmark(t *testing.T) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "PROXYBENCH_PARENT=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	line, err := bufio.NewReader(out).ReadString('\n')
	pid, perr := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || perr != nil {
		t.Fatalf("the parent printed %q (%v, %v)", line, err, perr)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("child %d still running 10 s after its parent was killed", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// alive reports whether process pid exists and is not a zombie.
func alive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

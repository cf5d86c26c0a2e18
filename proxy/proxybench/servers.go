package proxybench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/justrunit/justrunit/internal/prio"
)

// Upstream is a loopback HTTP server that answers every request after a
// delay with a fixed body: the work of a tier that waits rather than burns
// CPU, so the machine's cores go to the proxies being measured.
type Upstream struct {
	URL string
	srv *http.Server
	ln  net.Listener
}

// StartUpstream starts an upstream on 127.0.0.1 answering after delay with
// bodySize bytes.
func StartUpstream(delay time.Duration, bodySize int) (*Upstream, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	body := bytes.Repeat([]byte("x"), bodySize)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if delay > 0 {
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-r.Context().Done():
				t.Stop()
				return
			}
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		_, _ = w.Write(body)
	})
	u := &Upstream{URL: "http://" + ln.Addr().String(), ln: ln, srv: &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}}
	go func() { _ = u.srv.Serve(ln) }()
	return u, nil
}

// Close stops the upstream and closes its connections.
func (u *Upstream) Close() error { return u.srv.Close() }

// ServeUpstream is what an UpstreamCommand runs, first thing: it puts this
// process in the idle scheduling class (idle: by executing it again, see
// prio.ExecIdle) or sets its nice value (unless 0),
// starts an upstream answering after delay with bodySize bytes, prints
// {"listen": "host:port"} on w and serves until ctx ends.
func ServeUpstream(ctx context.Context, delay time.Duration, bodySize int, idle bool, nice int, w io.Writer) error {
	if delay < 0 || bodySize < 0 {
		return errors.New("delay and body size must not be negative")
	}
	switch {
	case idle && nice != 0:
		return errors.New("the idle scheduling class has no nice value")
	case idle:
		// Executes this program again from a thread in the class, so that
		// no thread the runtime is starting meanwhile keeps the old one.
		if err := prio.ExecIdle(); err != nil {
			return err
		}
	case nice != 0:
		if err := prio.SetNice(nice); err != nil {
			return fmt.Errorf("nice: %w", err)
		}
	}
	u, err := StartUpstream(delay, bodySize)
	if err != nil {
		return err
	}
	defer u.Close()
	if err := json.NewEncoder(w).Encode(map[string]string{"listen": u.ln.Addr().String()}); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}

// childUpstream is an Upstream run as its own process (UpstreamCommand).
type childUpstream struct {
	URL string
	c   *child
}

// startChildUpstream runs argv (e.g. justrunit bench upstream) with
// --delay, --body and --idle (class ClassIdle) or --nice, and returns once
// it accepts connections.
func startChildUpstream(ctx context.Context, argv []string, delay time.Duration, bodySize int, class string, nice int) (*childUpstream, error) {
	args := append(append([]string(nil), argv...), "--delay", delay.String(), "--body", fmt.Sprint(bodySize))
	if class == ClassIdle {
		args = append(args, "--idle")
	} else {
		args = append(args, "--nice", fmt.Sprint(nice))
	}
	c, err := startChild(ctx, "upstream", args)
	if err != nil {
		return nil, err
	}
	return &childUpstream{URL: "http://" + c.addr, c: c}, nil
}

// Close stops the upstream's process.
func (u *childUpstream) Close() error {
	_, err := u.c.stop()
	return err
}

// Hung is a loopback server that accepts connections and never answers.
type Hung struct {
	URL   string
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

// StartHung starts a hung server on 127.0.0.1.
func StartHung() (*Hung, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	h := &Hung{URL: "http://" + ln.Addr().String(), ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			h.mu.Lock()
			h.conns = append(h.conns, c)
			h.mu.Unlock()
		}
	}()
	return h, nil
}

// Close closes the listener and every connection it accepted.
func (h *Hung) Close() error {
	err := h.ln.Close()
	h.dropConns()
	return err
}

// dropConns closes the connections accepted so far: what still waits on
// them (copies, nginx's mirror subrequests) ends with an error.
func (h *Hung) dropConns() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, c := range h.conns {
		c.Close()
	}
	h.conns = nil
}

// Nginx is Debian's nginx run on loopback with a generated configuration:
// one server per case, proxying to the same upstreams as the in-proxy.
type Nginx struct {
	// Proxy, Mirror and MirrorHung are the base URLs of the three cases:
	// proxy_pass alone, with mirror to the healthy clone, with mirror to
	// the hung clone.
	Proxy, Mirror, MirrorHung string
	// Version is what nginx -v printed.
	Version string
	dir     string
	cmd     *exec.Cmd
	done    chan struct{}
}

// FindNginx returns the path of the nginx binary, or "" when there is none.
func FindNginx() string {
	if p, err := exec.LookPath("nginx"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

const nginxConf = `# Generated by justrunit bench proxy.
%s
worker_processes 2;
pid %[2]s/nginx.pid;
error_log %[2]s/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path %[2]s/body;
    proxy_temp_path %[2]s/proxy;
    fastcgi_temp_path %[2]s/fastcgi;
    uwsgi_temp_path %[2]s/uwsgi;
    scgi_temp_path %[2]s/scgi;
    keepalive_requests 1000000;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_buffering on;
    upstream online  { server %[3]s; keepalive 512; }
    upstream healthy { server %[4]s; keepalive 512; }
    upstream hung    { server %[5]s; keepalive 512; }
    server {
        listen %[6]s;
        location / { proxy_pass http://online; }
    }
    server {
        listen %[7]s;
        location / { mirror /_mirror; proxy_pass http://online; }
        location = /_mirror { internal; proxy_pass http://healthy$request_uri; }
    }
    server {
        listen %[8]s;
        location / { mirror /_mirror; proxy_pass http://online; }
        location = /_mirror { internal; proxy_pass http://hung$request_uri; }
    }
}
`

// StartNginx writes a configuration in a temporary directory and starts
// nginx (binary bin) in the foreground with it, proxying to online and
// mirroring to healthy and hung (host:port each). It returns once the three
// servers accept connections.
func StartNginx(ctx context.Context, bin, online, healthy, hung string) (*Nginx, error) {
	dir, err := os.MkdirTemp("", "justrunit-nginx-")
	if err != nil {
		return nil, err
	}
	n := &Nginx{dir: dir, done: make(chan struct{})}
	ok := false
	defer func() {
		if !ok {
			n.Close()
		}
	}()
	if out, err := exec.CommandContext(ctx, bin, "-v").CombinedOutput(); err == nil {
		n.Version = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(out)), "nginx version:"))
	}
	var ports []string
	for range 3 {
		a, err := freePort()
		if err != nil {
			return nil, err
		}
		ports = append(ports, a)
	}
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;" // workers can use the temporary directory
	}
	conf := fmt.Sprintf(nginxConf, user, dir, online, healthy, hung, ports[0], ports[1], ports[2])
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	n.cmd = exec.Command(bin, "-p", dir, "-c", confPath, "-e", filepath.Join(dir, "error.log"), "-g", "daemon off;")
	n.cmd.Stdout, n.cmd.Stderr = nil, nil
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := n.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start nginx: %w", err)
	}
	go func() { _ = n.cmd.Wait(); close(n.done) }()
	deadline := time.Now().Add(10 * time.Second)
	for _, p := range ports {
		for {
			c, err := net.DialTimeout("tcp", p, 200*time.Millisecond)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-n.done:
				return nil, fmt.Errorf("nginx exited at start: %s", n.errorLog())
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(20 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("nginx not listening on %s after 10s: %s", p, n.errorLog())
			}
		}
	}
	n.Proxy, n.Mirror, n.MirrorHung = "http://"+ports[0], "http://"+ports[1], "http://"+ports[2]
	ok = true
	return n, nil
}

func (n *Nginx) errorLog() string {
	b, _ := os.ReadFile(filepath.Join(n.dir, "error.log"))
	s := strings.TrimSpace(string(b))
	if len(s) > 2000 {
		s = s[len(s)-2000:]
	}
	if s == "" {
		return "(error log empty)"
	}
	return s
}

// Close stops nginx (SIGTERM to its process group, SIGKILL after 5 s) and
// removes its directory.
func (n *Nginx) Close() error {
	var err error
	if n.cmd != nil && n.cmd.Process != nil {
		pgid := n.cmd.Process.Pid
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-n.done:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-n.done
			err = errors.New("nginx did not stop on SIGTERM; killed")
		}
	}
	_ = os.RemoveAll(n.dir)
	return err
}

// freePort returns a loopback host:port that was free a moment ago (nginx
// must be given its ports; the kernel picks them).
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// server is an upstream in this process or in its own.
type server interface {
	base() string
	Close() error
}

func (u *Upstream) base() string      { return u.URL }
func (u *childUpstream) base() string { return u.URL }

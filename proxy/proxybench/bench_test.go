package proxybench

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"
)

// TestRunSmoke runs the whole benchmark, scaled down to a few seconds, and
// checks the report's shape and the one figure that does not depend on the
// machine's load: no on-line request is lost through the in-proxy, whatever
// the clone does. nginx is included when it is installed.
func TestRunSmoke(t *testing.T) {
	opts := Options{
		Rate: 200, Open: 300 * time.Millisecond, Closed: 300 * time.Millisecond, Warmup: 50 * time.Millisecond,
		Rounds: 1, Connections: 4, Timeout: time.Second,
		Settle: 2 * time.Second, // bounded: other tests' leftovers may keep the machine busy
	}
	if FindNginx() == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("nginx is not installed; .ci/run installs it (apt-get install nginx)")
		}
		t.Log("nginx not installed (apt-get install nginx): running without it")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rep, err := Run(ctx, opts, testWriter{t})
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, path := range [][]string{
		{"healthy", "p99_ratio"}, {"healthy", "throughput_vs_nginx_mirror"}, {"hung", "p99_ratio"},
		{"hung", "throughput_ratio"}, {"hung", "lost"}, {"nginx", "proxy"}, {"nginx", "mirror"}, {"nginx", "mirror_hung"},
	} {
		obj, ok := m[path[0]].(map[string]any)
		if !ok {
			t.Fatalf("report has no %q object: %s", path[0], b)
		}
		if _, ok := obj[path[1]]; !ok {
			t.Errorf("report has no %s.%s: %s", path[0], path[1], b)
		}
	}
	if rep.Healthy.Lost != 0 || rep.Slow.Lost != 0 || rep.Hung.Lost != 0 {
		t.Errorf("on-line requests lost: healthy %d slow %d hung %d, want 0", rep.Healthy.Lost, rep.Slow.Lost, rep.Hung.Lost)
	}
	if rep.Nginx.Mirror != nil && (rep.Nginx.Mirror.RPS <= 0 || rep.Nginx.Proxy.RPS <= 0) {
		t.Errorf("nginx figures %+v %+v, want throughput > 0", rep.Nginx.Proxy, rep.Nginx.Mirror)
	}
	if rep.Nginx.Mirror != nil && (rep.Nginx.Proxy.P99Ratio == nil || rep.Nginx.Mirror.P99Ratio == nil) {
		t.Errorf("nginx figures %+v %+v, want their p99 against direct's", rep.Nginx.Proxy, rep.Nginx.Mirror)
	}
	for _, c := range rep.Cases {
		if c.Name != "nginx_mirror_hung" && c.Open.OK == 0 {
			t.Errorf("case %s answered nothing: %+v", c.Name, c.Open)
		}
		if len(c.RoundsSettleS) != 1 || len(c.RoundsBusy) != 1 {
			t.Errorf("case %s: settle figures %v, busy %v: want one a round", c.Name, c.RoundsSettleS, c.RoundsBusy)
		}
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

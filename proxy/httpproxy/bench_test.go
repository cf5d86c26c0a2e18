package httpproxy

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// benchLoad sends n GETs to u from conc goroutines and returns the time it
// took.
func benchLoad(b *testing.B, c *http.Client, u string, n, conc int) time.Duration {
	b.Helper()
	var wg sync.WaitGroup
	start := time.Now()
	per := (n + conc - 1) / conc
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range per {
				resp, err := c.Get(u)
				if err != nil {
					b.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
	return time.Since(start)
}

// BenchmarkInProxyOverhead measures, in one run, the time per request
// direct to the server, through the in-proxy with no clone and through it
// with a healthy clone (the same server), and reports the ratios to
// direct. The server answers at once with 1 KiB, so the figures are the
// proxy's own cost, the worst case for the ratio.
func BenchmarkInProxyOverhead(b *testing.B) {
	body := strings.Repeat("x", 1024)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, body) })
	online := httptest.NewServer(h)
	defer online.Close()
	clone := httptest.NewServer(h)
	defer clone.Close()
	start := func(withClone bool) (string, func()) {
		p, err := NewInProxy(InConfig{Online: mustParseURL(online.URL)})
		if err != nil {
			b.Fatal(err)
		}
		addr, err := p.Start(context.Background(), "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		if withClone {
			if err := p.AddClone(context.Background(), "c", mustParseURL(clone.URL)); err != nil {
				b.Fatal(err)
			}
		}
		return "http://" + addr.String(), func() { p.Close() }
	}
	noClone, stop1 := start(false)
	defer stop1()
	withClone, stop2 := start(true)
	defer stop2()
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	const conc = 8
	for _, u := range []string{online.URL, noClone, withClone} { // warm the pools
		benchLoad(b, c, u, 200, conc)
	}
	b.ResetTimer()
	direct := benchLoad(b, c, online.URL, b.N, conc)
	proxy := benchLoad(b, c, noClone, b.N, conc)
	cloned := benchLoad(b, c, withClone, b.N, conc)
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(float64(direct.Nanoseconds())/n, "direct-ns/req")
	b.ReportMetric(float64(proxy.Nanoseconds())/n, "proxy-ns/req")
	b.ReportMetric(float64(cloned.Nanoseconds())/n, "proxy+clone-ns/req")
	b.ReportMetric(proxy.Seconds()/direct.Seconds(), "proxy/direct")
	b.ReportMetric(cloned.Seconds()/direct.Seconds(), "proxy+clone/direct")
}

func mustParseURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

// BenchmarkOutProxyOverhead measures, in one run, the time per call direct
// to the next tier and through the out-proxy's on-line face, which
// forwards and records each exchange, and reports the ratio. As in
// BenchmarkInProxyOverhead, the next tier answers at once with 1 KiB.
func BenchmarkOutProxyOverhead(b *testing.B) {
	body := strings.Repeat("x", 1024)
	next := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, body) }))
	defer next.Close()
	p, err := NewOutProxy(OutConfig{Upstream: mustParseURL(next.URL)})
	if err != nil {
		b.Fatal(err)
	}
	on, _, err := p.Start(context.Background(), "127.0.0.1:0", "")
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	through := "http://" + on.String() + "/item?id=7"
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	const conc = 8
	for _, u := range []string{next.URL, through} { // warm the pools
		benchLoad(b, c, u, 200, conc)
	}
	b.ResetTimer()
	direct := benchLoad(b, c, next.URL+"/item?id=7", b.N, conc)
	proxied := benchLoad(b, c, through, b.N, conc)
	b.StopTimer()
	if s := p.Stats(); s.Recorded == 0 {
		b.Fatalf("nothing recorded: %+v", s)
	}
	n := float64(b.N)
	b.ReportMetric(float64(direct.Nanoseconds())/n, "direct-ns/req")
	b.ReportMetric(float64(proxied.Nanoseconds())/n, "outproxy-ns/req")
	b.ReportMetric(proxied.Seconds()/direct.Seconds(), "outproxy/direct")
}

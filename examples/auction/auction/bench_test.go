package auction

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// BenchmarkApp measures the app tier's cost per request type at work 0
// (rendering and JSON only) and at DefaultWork, against a data tier whose
// answers are replayed from memory (as an out-proxy would), so the figure
// is the app tier's own time. Requests are sequential, so ns/op is close to
// the CPU time of one request on one core; cpu-ms/op is measured.
//
//	go test -run '^$' -bench App -benchtime 200x ./examples/auction/auction
func BenchmarkApp(b *testing.B) {
	d, err := NewDataServer(b.TempDir(), DataOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	data := httptest.NewServer(&replayer{next: d, rec: map[string]exchange{}})
	defer data.Close()
	reqs := []struct{ kind, method, path, body string }{
		{"home", "GET", "/", ""},
		{"browse", "GET", "/browse?category=7", ""},
		{"item", "GET", "/item/42", ""},
		{"bids", "GET", "/item/42/bids", ""},
		{"search", "GET", "/search?q=vintage", ""},
		{"bid", "POST", "/bid", `{"item_id":42,"user_id":9}`},
		{"sell", "POST", "/sell", `{"seller_id":3,"name":"old lamp","description":"brass lamp, works","category":12,"start_price":700}`},
	}
	for _, work := range []float64{0, DefaultWork} {
		a, err := NewAppServer(data.URL, AppOptions{Work: work})
		if err != nil {
			b.Fatal(err)
		}
		srv := httptest.NewServer(a)
		for _, r := range reqs {
			b.Run(fmt.Sprintf("work=%g/%s", work, r.kind), func(b *testing.B) {
				send := func() {
					req, _ := http.NewRequest(r.method, srv.URL+r.path, strings.NewReader(r.body))
					req.Header.Set("Content-Type", "application/json")
					resp, err := http.DefaultClient.Do(req)
					if err != nil {
						b.Fatal(err)
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode/100 != 2 {
						b.Fatalf("%s %s = %d", r.method, r.path, resp.StatusCode)
					}
				}
				send() // record the data tier's answers
				cpu0 := cpuTime(b)
				b.ResetTimer()
				for range b.N {
					send()
				}
				b.StopTimer()
				b.ReportMetric(float64(cpuTime(b)-cpu0)/1e6/float64(b.N), "cpu-ms/op")
			})
		}
		srv.Close()
		a.Close()
	}
}

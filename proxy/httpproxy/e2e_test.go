package httpproxy

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// app is a middle tier: each request makes it write an order to its next
// tier, with a fresh timestamp, and answer what the next tier said.
func app(t *testing.T, next string) *backend {
	c := testClient()
	return newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		body := fmt.Sprintf(`{"item":%q,"ts":%d}`, r.URL.Path, time.Now().UnixNano())
		resp, err := c.Post(next+"/orders", "application/json", strings.NewReader(body))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	})
}

// TestInOutClonedTier runs the whole duplication path: clients → in-proxy →
// on-line app → out-proxy → next tier, with a clone of the app fed by the
// in-proxy and answered by the out-proxy. The clone's writes get the
// recorded answers, the next tier sees none of them, and the clone's
// answers match the on-line ones.
func TestInOutClonedTier(t *testing.T) {
	nt := newNextTier(t, 5*time.Millisecond)
	masks, err := ParseMasks(nil, []string{"$.ts"})
	if err != nil {
		t.Fatal(err)
	}
	out, outOnline, outClone := startOut(t, OutConfig{Upstream: nt.URL, Masks: masks})
	onlineApp := app(t, outOnline)
	cloneApp := app(t, outClone)
	in, base := startIn(t, InConfig{Online: onlineApp.URL, Compare: true})
	if err := in.AddClone(context.Background(), "clone", cloneApp.URL); err != nil {
		t.Fatal(err)
	}
	c := testClient()
	const n = 30
	for i := range n {
		if code, body := get(t, c, fmt.Sprintf("%s/item/%d", base, i)); code != 201 || !strings.Contains(body, `"id"`) {
			t.Fatalf("on-line answer %d %q", code, body)
		}
	}
	waitFor(t, 10*time.Second, "the clone's answers compared", func() bool {
		st, _ := in.Stats().Clone("clone")
		return st.Compared == n
	})
	st, _ := in.Stats().Clone("clone")
	if st.Mismatched != 0 || st.Response.Errors != 0 || st.Dropped != 0 {
		t.Errorf("clone stats %+v, want every answer equal to the on-line one", st)
	}
	ost := out.Stats()
	if ost.Matched != n || ost.Unmatched != 0 || ost.MatchRate != 1 {
		t.Errorf("out-proxy stats %+v, want %d matched", ost, n)
	}
	if m := nt.methods(); m["POST"] != n || len(m) != 1 {
		t.Errorf("next tier saw %v, want the %d on-line writes only", m, n)
	}
}

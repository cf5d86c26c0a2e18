package loadgen_test

import (
	"net/http/httptest"
	"testing"
	"time"

	"github.com/justrunit/justrunit/examples/auction/auction"
	"github.com/justrunit/justrunit/examples/auction/loadgen"
)

// TestAgainstAuctionSite drives the three tiers with the RUBiS mix: every
// request the mix makes must be one the site serves.
func TestAgainstAuctionSite(t *testing.T) {
	d, err := auction.NewDataServer(t.TempDir(), auction.DataOptions{SeedItems: 300, SeedUsers: 100})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	dataSrv := httptest.NewServer(d)
	defer dataSrv.Close()
	a, _ := auction.NewAppServer(dataSrv.URL, auction.AppOptions{Work: 0.1})
	appSrv := httptest.NewServer(a)
	defer appSrv.Close()
	w, _ := auction.NewWebServer(appSrv.URL, auction.WebOptions{})
	webSrv := httptest.NewServer(w)
	defer webSrv.Close()

	// A mix with every request type equally likely, so a short run sees
	// them all.
	all := loadgen.Mix{Name: "all", Weights: map[loadgen.Kind]int{}}
	for _, k := range loadgen.Kinds {
		all.Weights[k] = 1
	}
	for _, m := range []loadgen.Mix{loadgen.RUBiS, all} {
		sum, err := loadgen.Run(t.Context(), loadgen.Config{
			Target: webSrv.URL, Rate: 100, Duration: time.Second, Mix: m, Items: 300, Users: 100, Seed: 3,
		})
		if err != nil {
			t.Fatal(err)
		}
		if sum.Errors != 0 || sum.Completed != sum.Scheduled || sum.Completed < 60 {
			t.Errorf("mix %s: counts %+v, errors %v; want every request served", m.Name, sum.Counts, sum.ErrorKinds)
		}
		for _, k := range loadgen.Kinds {
			if m.Weights[k] > 0 && m.Name == "all" && sum.ByKind[k].Completed == 0 {
				t.Errorf("mix %s: no %s request completed", m.Name, k)
			}
		}
	}
}

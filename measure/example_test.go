package measure_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/measure"
)

// A proxy records each response of the clone; the experimenter reads
// windows.
func ExampleRecorder() {
	rec := measure.NewRecorder()
	for i := 1; i <= 1000; i++ {
		rec.Record(time.Duration(i) * 100 * time.Microsecond) // 0.1 .. 100 ms
	}
	rec.RecordError()
	s := rec.Reset()
	fmt.Printf("%d responses, %d errors\n", s.Count, s.Errors)
	fmt.Printf("p50 %.1f ms, p95 %.1f ms in [%.1f, %.1f]\n", s.RT.P50, s.RT.P95, s.RT.P95Low, s.RT.P95High)
	// Output:
	// 1000 responses, 1 errors
	// p50 50.0 ms, p95 95.0 ms in [93.6, 96.4]
}

// The experimenter measures one point: a fixed warm-up, then a window of
// 10 s to 60 s that stops as soon as p95 is known to ±2.5%, energy from RAPL
// or the host's power model.
func ExampleMeasureWindow() {
	rec := measure.NewRecorder() // handed to the in-proxy, which records the clone's responses
	meter, why := measure.NewEnergyMeter("", measure.ModelMeter{
		Model:     justrunit.PowerModel{IdleWatts: 100, MaxWatts: 200},
		HostCores: 4,
		CPUTime:   measure.ProcessCPUTime, // the platform passes the clone's cgroup CPU time
		Name:      "host class std",
	})
	log.Print(why)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // the study's time bound
	defer cancel()
	res, err := measure.MeasureWindow(ctx, measure.WindowConfig{
		WarmUp: 5 * time.Second,
		Min:    10 * time.Second, Max: time.Minute,
		RelCI: 0.05, MinSamples: 500,
	}, rec, meter, func(p measure.Progress) {
		log.Printf("%s %v: %d samples, p95 ±%.1f%%", p.Phase, p.Elapsed, p.Summary.Count, 50*p.RelWidth)
	})
	if err != nil {
		log.Fatal(err)
	}
	obs := res.Observation(justrunit.Point{50})
	fmt.Println(obs.Stop, obs.RT.P95, obs.Energy.PerRequest, obs.Energy.Source)
}

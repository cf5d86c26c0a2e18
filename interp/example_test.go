package interp_test

import (
	"fmt"
	"os"

	"github.com/justrunit/justrunit"
	"github.com/justrunit/justrunit/interp"
)

// The paper's server-expansion case: CPU shares of 60%, 80% and 100% of a
// core are measured, 70% and 90% interpolated. The true response times
// there are 56.00 ms and 40.00 ms.
func Example() {
	cpu, _ := justrunit.ParseParameter("cpu=60..100 step 10")
	space, _ := justrunit.NewSpace(cpu)
	m, _ := justrunit.NewMatrix(space, []justrunit.Metric{justrunit.RTMean})
	for _, share := range []float64{60, 80, 100} {
		rt := 20 / (1 - 45/share) // what the experiment measured, in ms
		_ = m.Record(justrunit.Observation{Point: justrunit.Point{share}, RT: justrunit.ResponseTime{Mean: rt}})
	}
	for _, name := range []string{"linear", "gp"} {
		ip, err := interp.New(name)
		if err != nil {
			fmt.Println(err)
			return
		}
		if err := ip.Interpolate(m); err != nil {
			fmt.Println(err)
			return
		}
		fmt.Println(name + ":")
		_ = m.Render(os.Stdout)
	}
	// Output:
	// linear:
	//   cpu (%)  rt_mean (ms)
	//        60       80.00 X
	//        70  62.86±3.12 I
	//        80       45.71 X
	//        90  41.04±3.12 I
	//       100       36.36 X
	// cells: 3 X measured, 2 I interpolated, 0 T used by a decision, 0 V verified, 0 empty
	// gp:
	//   cpu (%)  rt_mean (ms)
	//        60       80.00 X
	//        70  58.06±2.22 I
	//        80       45.71 X
	//        90  40.45±1.08 I
	//       100       36.36 X
	// cells: 3 X measured, 2 I interpolated, 0 T used by a decision, 0 V verified, 0 empty
}

func ExampleNew() {
	_, err := interp.New("spline")
	fmt.Println(err)
	fmt.Println(interp.Names())
	// Output:
	// interpolator: unknown; known: gp, linear (got spline)
	// [gp linear]
}

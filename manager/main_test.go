package manager_test

import (
	"os"
	"testing"

	"github.com/justrunit/justrunit/proxy/cloneside"
)

// TestMain lets this test binary be the clone side of the experiments its
// tests run (see cloneside.RunIfHelper).
func TestMain(m *testing.M) {
	cloneside.RunIfHelper()
	os.Exit(m.Run())
}

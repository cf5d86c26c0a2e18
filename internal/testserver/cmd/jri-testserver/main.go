// Command jri-testserver runs the CPU-bound HTTP test server of package
// testserver; the local platform's tests build it with go build.
package main

import (
	"os"

	"github.com/justrunit/justrunit/internal/testserver"
)

func main() { os.Exit(testserver.Main(os.Args[1:])) }

// Command guestserver is the tiny HTTP service the qemu platform's tests and
// benchmark run inside a guest: an in-memory counter (to show that a live
// clone continues from the original's memory and then diverges), a
// file-writing endpoint (to show that the clone's disk is its own
// copy-on-write overlay) and a CPU-burning endpoint (to show that the CPU
// share set through the cgroup changes response time).
//
// It is built with CGO_ENABLED=0 and put into the guest image:
//
//	GET  /health, /healthz   ok
//	POST /incr               adds one to the counter, returns the new value
//	GET  /count              returns the counter
//	PUT  /file/NAME          writes the body to DIR/NAME and syncs it
//	GET  /file/NAME          returns DIR/NAME (404 if missing)
//	GET  /work?n=N           does N units of CPU work (fixed work, not fixed
//	                         time: a guest cannot see its CPU being throttled)
//	POST /fill?mib=N         allocates N MiB more and writes to every page (so
//	                         that a migration has real memory to carry)
//	GET  /call?addr=H:P      GETs http://H:P/ and returns its body (the
//	                         service's call to its next tier)
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	addr := flag.String("addr", ":8080", "listen address")
	dir := flag.String("dir", "/data", "directory /file/ reads and writes")
	flag.Parse()
	var count atomic.Int64
	mux := http.NewServeMux()
	ok := func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") }
	mux.HandleFunc("GET /healthz", ok)
	mux.HandleFunc("GET /health", ok)
	mux.HandleFunc("POST /incr", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, count.Add(1)) })
	mux.HandleFunc("GET /count", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, count.Load()) })
	mux.HandleFunc("PUT /file/{name}", func(w http.ResponseWriter, r *http.Request) {
		name := filepath.Base(r.PathValue("name"))
		b, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err == nil {
			err = writeSync(filepath.Join(*dir, name), b)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "written")
	})
	mux.HandleFunc("GET /file/{name}", func(w http.ResponseWriter, r *http.Request) {
		b, err := os.ReadFile(filepath.Join(*dir, filepath.Base(r.PathValue("name"))))
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		w.Write(b)
	})
	mux.HandleFunc("GET /work", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		start := time.Now()
		work(n)
		fmt.Fprintf(w, "%d\n", time.Since(start).Microseconds())
	})
	var (
		fillMu sync.Mutex
		filled [][]byte
	)
	mux.HandleFunc("POST /fill", func(w http.ResponseWriter, r *http.Request) {
		mib, _ := strconv.Atoi(r.URL.Query().Get("mib"))
		fillMu.Lock()
		defer fillMu.Unlock()
		for i := 0; i < mib; i++ {
			b := make([]byte, 1<<20)
			for j := 0; j < len(b); j += 512 {
				b[j] = byte(i + j/512 + 1)
			}
			filled = append(filled, b)
		}
		fmt.Fprintln(w, len(filled))
	})
	client := &http.Client{Timeout: 5 * time.Second}
	mux.HandleFunc("GET /call", func(w http.ResponseWriter, r *http.Request) {
		resp, err := client.Get("http://" + r.URL.Query().Get("addr") + "/")
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	})
	log.Printf("guestserver listening on %s", *addr)
	log.Fatal(http.ListenAndServe(*addr, mux))
}

func writeSync(path string, b []byte) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// work does n units of CPU work (about a millisecond each on a fast core).
func work(n int) {
	x := 1
	for k := 0; k < n; k++ {
		for i := 0; i < 300000; i++ {
			x = x*31 + i
		}
	}
	sink = x
}

// sink keeps work's loop from being optimised away.
//
//lint:ignore U1000 written, never read, on purpose
var sink int

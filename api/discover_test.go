package api

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestLocalURL(t *testing.T) {
	for _, tt := range []struct {
		scheme string
		addr   net.Addr
		want   string
	}{
		{"https", &net.TCPAddr{IP: net.IPv4zero, Port: 7443}, "https://127.0.0.1:7443"},
		{"https", &net.TCPAddr{IP: net.IPv6unspecified, Port: 7443}, "https://127.0.0.1:7443"},
		{"http", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 7070}, "http://127.0.0.1:7070"},
		{"http", &net.TCPAddr{IP: net.IPv6loopback, Port: 7070}, "http://[::1]:7070"},
		{"https", &net.TCPAddr{IP: net.IPv4(10, 0, 0, 5), Port: 7443}, "https://10.0.0.5:7443"},
	} {
		if got := LocalURL(tt.scheme, tt.addr); got != tt.want {
			t.Errorf("LocalURL(%q, %v) = %q, want %q", tt.scheme, tt.addr, got, tt.want)
		}
	}
}

// TestDiscoverTLS checks that the CLI on the daemon's machine finds a TLS
// daemon through its state file, written as serve writes it: listening on
// an unspecified address (which no certificate names), or with a
// certificate that names neither the URL's host nor loopback.
func TestDiscoverTLS(t *testing.T) {
	t.Setenv(EnvServer, "")
	t.Setenv(EnvToken, "")
	t.Setenv(EnvTokenFile, "")
	t.Setenv(EnvCAFile, "")
	d := newDaemon(t, daemonOpts{noRunner: true})
	seedStudy(t, d.store)
	for _, tt := range []struct {
		name   string
		listen string
		dns    []string
		ips    []net.IP
	}{
		{"on 0.0.0.0", "0.0.0.0:0", nil, []net.IP{net.IPv4(127, 0, 0, 1)}},
		{"on ::", "[::]:0", nil, []net.IP{net.IPv4(127, 0, 0, 1)}},
		{"certificate for a DNS name only", "0.0.0.0:0", []string{"*.example.test", "justrunit.example.test"}, nil},
		{"certificate for another address", "127.0.0.1:0", nil, []net.IP{net.IPv4(10, 0, 0, 5)}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			cert, caFile := testCert(t, dir, tt.dns, tt.ips)
			ln, err := net.Listen("tcp", tt.listen)
			if err != nil {
				t.Skipf("cannot listen on %s here: %v", tt.listen, err)
			}
			hs := &http.Server{Handler: d.srv, ReadHeaderTimeout: 10 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
			go hs.Serve(tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}}))
			defer hs.Close()

			url := LocalURL("https", ln.Addr())
			tokFile := filepath.Join(dir, "token")
			os.WriteFile(tokFile, []byte(testToken+"\n"), 0o600)
			if _, err := WriteState(dir, DaemonState{URL: url, PID: os.Getpid(), TokenFile: tokFile,
				CAFile: caFile, ServerName: ServerName(cert.Leaf, url)}); err != nil {
				t.Fatal(err)
			}
			c, err := Discover(context.Background(), DiscoverOptions{DataDir: dir})
			if err != nil {
				t.Fatalf("Discover of a daemon on %s at %s: %v", tt.listen, url, err)
			}
			if studies, err := c.Studies(context.Background()); err != nil || len(studies) != 1 {
				t.Errorf("Studies through the discovered daemon = %d, %v", len(studies), err)
			}
		})
	}
}

// testCert returns a self-signed certificate for dns and ips and the file
// holding it (PEM).
func testCert(t *testing.T, dir string, dns []string, ips []net.IP) (tls.Certificate, string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "justrunit test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: dns, IPAddresses: ips, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "cert.pem")
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k, Leaf: leaf}, file
}

package api

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// The proof a daemon gives on GET /healthz (HealthProof) is bound to the
// Host the client sent, the name and port it dialled, and the daemon gives
// it only for a Host that is its own: the address it listens on, or a name
// it was given (serve --name). Without that binding, a server at an
// address the client wrongly takes for the daemon's (a stale state file's,
// one a client kept while the daemon moved) could relay the client's
// challenge to the daemon wherever it listens now, hand its proof back and
// receive the token. With it, a relay that passes the client's Host on
// gets no proof (not the daemon's name), and one that sends the daemon's
// own gets a proof for a Host the client did not dial, which the client
// refuses. Over TLS the certificate the client verifies already says who
// answers, so a proof is given whatever the Host.

// hostNames is what a daemon takes for its own Host: the address it
// listens on and the names it was given.
type hostNames struct {
	// ip and port are the listener's; an unspecified ip (0.0.0.0, ::)
	// stands for the addresses of the machine's interfaces (of its
	// family: IPv4 only for 0.0.0.0).
	ip   net.IP
	port string
	// names are further hosts, in lower case, each with its port or ""
	// for any.
	names map[string]map[string]bool
	// localIPs lists the machine's interface addresses (for an
	// unspecified ip); net.InterfaceAddrs but for tests.
	localIPs func() ([]net.IP, error)
}

// newHostNames returns the names of a daemon listening on listen (a
// *net.TCPAddr), with the further names given (see CheckName). A nil
// listen returns nil: every Host is the daemon's (an embedding program
// that checks Host itself, or tests).
func newHostNames(listen net.Addr, names []string) (*hostNames, error) {
	if listen == nil {
		if len(names) > 0 {
			return nil, fmt.Errorf("names without the address the daemon listens on (Listen)")
		}
		return nil, nil
	}
	ta, ok := listen.(*net.TCPAddr)
	if !ok {
		return nil, fmt.Errorf("listen address %v is not a TCP address", listen)
	}
	h := &hostNames{ip: ta.IP, port: strconv.Itoa(ta.Port), names: map[string]map[string]bool{}, localIPs: interfaceIPs}
	if h.ip == nil {
		h.ip = net.IPv6unspecified
	}
	for _, n := range names {
		host, port, err := splitName(n)
		if err != nil {
			return nil, fmt.Errorf("name %q: %w", n, err)
		}
		if h.names[host] == nil {
			h.names[host] = map[string]bool{}
		}
		h.names[host][port] = true
	}
	return h, nil
}

// CheckName checks a name a daemon is reached by (serve --name): HOST or
// HOST:PORT, a DNS name or an IP address, with no scheme or path. Its
// error says what is wrong, not which name.
func CheckName(name string) error {
	_, _, err := splitName(name)
	return err
}

// splitName returns name's host, in lower case, and its port ("" when it
// has none).
func splitName(name string) (host, port string, err error) {
	bad := func(why string) error {
		return fmt.Errorf("%s; want HOST or HOST:PORT, e.g. justrunit.example.com or 10.0.0.5:7070", why)
	}
	if strings.Contains(name, "://") || strings.ContainsAny(name, "/?#@ \t") {
		return "", "", bad("a name, not a URL")
	}
	host = name
	if h, p, err := net.SplitHostPort(name); err == nil {
		host, port = h, p
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return "", "", bad("the port must be a number from 1 to 65535")
		}
	} else if strings.Count(name, ":") == 1 {
		return "", "", bad(err.Error())
	}
	host = canonHost(host)
	if host == "" {
		return "", "", bad("no host")
	}
	return host, port, nil
}

// canonHost returns a Host's host part as names compare: lower case,
// without brackets or a trailing dot.
func canonHost(host string) string {
	return strings.ToLower(strings.TrimSuffix(strings.Trim(host, "[]"), "."))
}

// owns reports whether Host hostport (HOST or HOST:PORT, as a request
// carries it; a missing port is defPort, the scheme's) is one of the
// daemon's: a name it was given, or its own address and port. "localhost"
// is one only on a daemon listening on every address (::), which then
// answers at both loopback addresses it may mean: where it listens on one,
// another server may listen on the other.
func (h *hostNames) owns(hostport, defPort string) bool {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		host, port = hostport, defPort
	}
	host = canonHost(host)
	if ports := h.names[host]; ports[""] || ports[port] {
		return true
	}
	if port != h.port {
		return false
	}
	v4only := h.ip.Equal(net.IPv4zero)
	if host == "localhost" {
		return h.ip.IsUnspecified() && !v4only
	}
	ip := net.ParseIP(host)
	switch {
	case ip == nil:
		return false
	case !h.ip.IsUnspecified():
		return ip.Equal(h.ip)
	case v4only && ip.To4() == nil:
		return false
	}
	ips, err := h.localIPs()
	if err != nil {
		return false
	}
	for _, l := range ips {
		if l.Equal(ip) {
			return true
		}
	}
	return false
}

// interfaceIPs returns the addresses of the machine's interfaces.
func interfaceIPs() ([]net.IP, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	ips := make([]net.IP, 0, len(addrs))
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			ips = append(ips, n.IP)
		}
	}
	return ips, nil
}

package api

import (
	"net"
	"net/http"
	"strconv"
	"strings"
)

// refuseCrossOrigin refuses a state-changing call (POST and the like) that a
// browser sent from another site's page, told by its Sec-Fetch-Site or
// Origin header (http.CrossOriginProtection). Reads pass, and so do calls
// from programs (the CLI, curl), which send neither header. The bearer token
// already keeps other sites out, as a page cannot read it; this keeps them
// out of a daemon without one (--no-auth) too.
func (s *Server) refuseCrossOrigin(h http.Handler) http.Handler {
	cop := http.NewCrossOriginProtection()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := cop.Check(r); err != nil {
			s.writeError(w, r, &Error{Status: http.StatusForbidden, Code: CodeForbidden,
				Message: "refused " + r.Method + " " + r.URL.Path + " (" + err.Error() + "): a page from another site cannot act on the daemon; " +
					"use its dashboard, the justrunit command or a program that sends no Origin header"})
			return
		}
		h.ServeHTTP(w, r)
	})
}

// requireLoopbackHost answers only requests whose Host header names this
// machine's loopback interface: "localhost" or a loopback address, with any
// port. A daemon without a token binds loopback only (New's caller checks),
// so that is also every address it listens on. It stops DNS rebinding: a
// page from evil.example whose name later resolves to 127.0.0.1 reaches the
// daemon as "same origin" but still sends Host: evil.example.
func (s *Server) requireLoopbackHost(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !loopbackHost(r.Host) {
			s.writeError(w, r, &Error{Status: http.StatusForbidden, Code: CodeForbidden,
				Message: "Host " + strconv.Quote(r.Host) + " is not a loopback name or address: a daemon without authentication (--no-auth) " +
					"answers only calls to localhost or a loopback address, so that no web page can reach it through a name of its own (DNS rebinding); " +
					"call it as http://127.0.0.1:PORT or http://localhost:PORT"})
			return
		}
		h.ServeHTTP(w, r)
	})
}

// loopbackHost reports whether a Host header (HOST or HOST:PORT) names the
// loopback interface.
func loopbackHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.Trim(host, "[]"), ".")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

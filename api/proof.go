package api

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"
)

// provingClient returns a client for the plain-HTTP daemon at u that
// sends token only over connections to a server that has proved it holds
// it: each new connection, before the transport sends anything over it,
// carries a health probe with a fresh challenge (HealthProof), and one
// whose answer proves nothing is closed, failing the call. Discover checked
// one server once; a client kept for hours ("study run" polling its study
// through a daemon restart) would otherwise send the token to whatever
// listens at the address after the daemon died. Any daemon holding the
// token may answer, so the calls go on through a restart. Over https the
// certificate, verified on every connection, says who answers; through a
// proxy the probe cannot be made, and base is returned as it is (nil: the
// default client).
func provingClient(base *http.Client, u *url.URL, token string) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if base != nil {
		t, ok := base.Transport.(*http.Transport)
		if !ok {
			return base
		}
		tr = t.Clone()
	}
	if u.Scheme != "http" || tr.DialContext == nil {
		return base
	}
	if tr.Proxy != nil {
		if p, err := tr.Proxy(&http.Request{URL: u}); err != nil || p != nil {
			return base
		}
	}
	dial := tr.DialContext
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if err := proveConn(ctx, conn, u.Host, token); err != nil {
			conn.Close()
			return nil, fmt.Errorf("%s: %w", addr, err)
		}
		return conn, nil
	}
	return &http.Client{Timeout: defaultHTTP.Timeout, Transport: tr}
}

// proveTimeout bounds a connection's health probe when its context does not.
const proveTimeout = 10 * time.Second

// proveConn sends GET /healthz with a fresh challenge over conn, a new
// connection to host, and checks that the answer proves the server holds
// token; conn is then left where a transport can send its first request.
func proveConn(ctx context.Context, conn net.Conn, host, token string) error {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(proveTimeout)
	}
	conn.SetDeadline(deadline)
	defer conn.SetDeadline(time.Time{})
	challenge := rand.Text()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet,
		"http://"+host+"/healthz?challenge="+url.QueryEscape(challenge), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	if err := req.Write(conn); err != nil {
		return fmt.Errorf("prove the daemon holds the token: %w", err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return fmt.Errorf("prove the daemon holds the token: %w", err)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	resp.Body.Close()
	var h Health
	switch {
	case err != nil:
		return fmt.Errorf("prove the daemon holds the token: %w", err)
	case resp.StatusCode != http.StatusOK || json.Unmarshal(b, &h) != nil || h.Service != "justrunit":
		return errors.New("the server is not a JustRunIt daemon (any more); the token was not sent")
	case h.Proof == "" && h.ProofRefused != "":
		return fmt.Errorf("the daemon proves nothing to this client (%s); the token was not sent", h.ProofRefused)
	case !hmac.Equal([]byte(h.Proof), []byte(HealthProof(token, h.Daemon, host, challenge))):
		return errors.New("the server does not prove it holds the token (it is not the daemon, or not any more); the token was not sent")
	case resp.Close || br.Buffered() > 0:
		// The server closes the connection (it is stopping), or sent
		// more than the answer: nothing more can go over it.
		return errors.New("the daemon closes the connection")
	}
	return nil
}

package api

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// StateFile is the file a running daemon keeps in its data directory so the
// CLI on the same machine finds it. It holds no secret: the token stays in
// the token file it names.
const StateFile = "serve.json"

// Environment variables the CLI reads to reach a daemon.
const (
	EnvServer    = "JUSTRUNIT_SERVER"     // the daemon's URL, e.g. https://10.0.0.5:7070
	EnvToken     = "JUSTRUNIT_TOKEN"      // the bearer token
	EnvTokenFile = "JUSTRUNIT_TOKEN_FILE" // a file holding the token
	EnvCAFile    = "JUSTRUNIT_CA_FILE"    // a PEM certificate to trust for https
)

// DaemonState is the content of StateFile.
type DaemonState struct {
	// URL is where a client on this machine reaches the daemon (LocalURL).
	URL       string `json:"url"`
	PID       int    `json:"pid"`
	TokenFile string `json:"token_file,omitempty"`
	// CAFile is the daemon's certificate, which its clients trust; and
	// ServerName, when set, the name they verify it by, one it carries
	// where it does not name URL's host (see ServerName).
	CAFile     string `json:"ca_file,omitempty"`
	ServerName string `json:"server_name,omitempty"`
	// Daemon is the daemon's ID (Server.ID), which it proves with the
	// token before a client sends the token (see HealthProof).
	Daemon  string    `json:"daemon,omitempty"`
	Started time.Time `json:"started"`
}

// LocalURL returns the URL a client on this machine dials to reach a daemon
// listening on addr with scheme ("http" or "https"): addr's, with a
// loopback address in place of an unspecified host (0.0.0.0, ::). Such a
// host may be dialled on Linux, but no certificate names it, so a client
// could not verify the daemon's.
func LocalURL(scheme string, addr net.Addr) string {
	host, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return scheme + "://" + addr.String()
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		// Go listens on both families when the host is unspecified, so
		// the IPv4 loopback answers for :: too; certificates name it
		// more often than ::1.
		host = "127.0.0.1"
	}
	return scheme + "://" + net.JoinHostPort(host, port)
}

// ServerName returns the name a client reaching the daemon at daemonURL
// should verify cert by: "" when cert names the URL's host (or is nil),
// else the first DNS name (not a wildcard) or IP address cert carries, or
// else a name under its first wildcard ("justrunit.corp.example" for
// "*.corp.example", which the wildcard covers); "" when it carries none. A
// certificate for the daemon's public name, or an internal CA's for a
// whole domain, then still serves the CLI that reaches it over loopback.
func ServerName(cert *x509.Certificate, daemonURL string) string {
	u, err := url.Parse(daemonURL)
	if cert == nil || err != nil || cert.VerifyHostname(u.Hostname()) == nil {
		return ""
	}
	for _, n := range cert.DNSNames {
		if !strings.HasPrefix(n, "*.") {
			return n
		}
	}
	if len(cert.IPAddresses) > 0 {
		return cert.IPAddresses[0].String()
	}
	for _, n := range cert.DNSNames {
		if name := "justrunit" + strings.TrimPrefix(n, "*"); cert.VerifyHostname(name) == nil {
			return name
		}
	}
	return ""
}

// WriteState writes st to dataDir/StateFile (mode 0600) and returns a
// function that removes it, which the daemon calls when it stops.
func WriteState(dataDir string, st DaemonState) (remove func() error, err error) {
	p := filepath.Join(dataDir, StateFile)
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("daemon state: %w", err)
	}
	// A new file renamed into place: a CLI reading it meanwhile finds
	// the old one or this one, never half of it.
	if err := writeReplace(p, append(b, '\n'), 0o600); err != nil {
		return nil, fmt.Errorf("daemon state: %w", err)
	}
	return func() error {
		// Only remove the file if it is still ours: another daemon on the
		// same data directory may have replaced it.
		cur, err := readState(p)
		if err != nil || cur.PID != st.PID || cur.URL != st.URL {
			return nil
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}, nil
}

func readState(path string) (*DaemonState, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var st DaemonState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("daemon state %s: %w", path, err)
	}
	return &st, nil
}

// ErrNoDaemon means no daemon was named and none is running for the data
// directory: the CLI then reads the store itself.
var ErrNoDaemon = errors.New("no daemon running")

// DiscoverOptions say where to look for a daemon. Empty fields fall back to
// the environment (EnvServer, EnvToken, EnvTokenFile, EnvCAFile), then to
// the daemon's StateFile in DataDir.
type DiscoverOptions struct {
	DataDir   string
	Server    string
	Token     string
	TokenFile string
	CAFile    string
	// Timeout bounds the health probe; 2 s when 0.
	Timeout time.Duration
}

// Discover returns a Client for the daemon the options or the environment
// name, or else the one whose StateFile is in DataDir, after checking it
// answers. It returns ErrNoDaemon when none is named and none answers (a
// state file left by a daemon that died is ignored); a named daemon that
// does not answer is an error, not a reason to fall back.
//
// A token read from the daemon's token file, which the state file names,
// is sent only once the server has proved that it holds it (HealthProof,
// bound to the Host the client sent, so that a server passing the client's
// calls on to the daemon cannot pass the proof on) and that it is the
// daemon that wrote the state file: a server that is
// not, which may be anyone now listening where a dead daemon did, is not
// the daemon. Over plain HTTP, each connection the client opens later
// proves it again before the token goes over it (see provingClient). A
// token given explicitly (Token, TokenFile or the environment) is sent to
// a server that proves nothing, one older than proofs or one reached by a
// name the daemon was not given (Health.ProofRefused: a tunnel, or a
// server passing calls on): the user vouches for it. A daemon found through its state file that runs without a token
// is given none. A server that proves it holds another token is refused
// with ErrUnauthorized, naming where the token came from (a wrong token,
// or one changed since), before the token is sent.
func Discover(ctx context.Context, o DiscoverOptions) (*Client, error) {
	named := true
	server := firstOf(o.Server, os.Getenv(EnvServer))
	tokenFile := firstOf(o.TokenFile, os.Getenv(EnvTokenFile))
	caFile := firstOf(o.CAFile, os.Getenv(EnvCAFile))
	serverName, daemon, stateTokenFile := "", "", ""
	if server == "" {
		named = false
		if o.DataDir == "" {
			return nil, ErrNoDaemon
		}
		st, err := readState(filepath.Join(o.DataDir, StateFile))
		if errors.Is(err, fs.ErrNotExist) {
			return nil, ErrNoDaemon
		}
		if err != nil {
			return nil, err
		}
		server = st.URL
		stateTokenFile = st.TokenFile
		caFile = firstOf(caFile, st.CAFile)
		serverName, daemon = st.ServerName, st.Daemon
	}
	if !strings.Contains(server, "://") {
		server = "http://" + server
	}
	// The Host the calls carry, which a proof is bound to.
	su, err := url.Parse(server)
	if err != nil || su.Host == "" {
		return nil, fmt.Errorf("daemon URL %q: want http(s)://HOST:PORT", server)
	}
	host := su.Host
	token, from, explicit, err := tokenFor(o, tokenFile, stateTokenFile)
	if err != nil {
		return nil, err
	}
	hc, err := clientFor(caFile, serverName)
	if err != nil {
		return nil, err
	}
	// No token until the server has proved it holds it.
	c := NewClient(server, "")
	c.HTTP = hc
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = 2 * time.Second
	}
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	challenge := rand.Text()
	h, err := c.Health(pctx, challenge)
	if err == nil && daemon != "" && h.Daemon != daemon {
		err = fmt.Errorf("another daemon (%q) answers than the one that wrote the state file (%q)", h.Daemon, daemon)
	}
	if err != nil {
		if named {
			return nil, fmt.Errorf("daemon at %s: %w", server, err)
		}
		return nil, fmt.Errorf("%w (the state file %s names %s: %v)",
			ErrNoDaemon, filepath.Join(o.DataDir, StateFile), server, err)
	}
	switch {
	case token == "":
		// The calls answer 401 saying so, unless the daemon runs
		// without authentication.
	case h.Proof != "":
		if !hmac.Equal([]byte(h.Proof), []byte(HealthProof(token, h.Daemon, host, challenge))) {
			return nil, fmt.Errorf("daemon at %s: %w", server, &Error{Status: http.StatusUnauthorized, Code: CodeUnauthorized,
				Message: "the daemon does not hold " + from + " (a wrong token, or one changed since the daemon started), or the server is not the daemon; the token was not sent"})
		}
		// And each connection the token goes over proves it again.
		c.HTTP = provingClient(hc, su, token)
		c.Token = token
	case explicit && daemon == "":
		// A daemon older than proofs, one without a token, or one
		// reached by a name it does not know for its own (a tunnel),
		// given the token by the user, who vouches for it.
		c.Token = token
	case h.ProofRefused != "":
		return nil, fmt.Errorf("daemon at %s: %s; so %s was not sent: if that is how the daemon is reached, start it with --name %s, or give the token in $%s to send it anyway",
			server, h.ProofRefused, from, host, EnvToken)
	case daemon == "":
		// The state file of a daemon older than proofs.
		return nil, fmt.Errorf("daemon at %s: it proves nothing, so %s was not sent: a daemon started before token proofs; restart it, or give the token in $%s to send it anyway",
			server, from, EnvToken)
	default:
		// The daemon that wrote the state file runs without a token:
		// it proves nothing, and is given nothing.
	}
	c.tokenFrom = from
	return c, nil
}

// tokenFor returns the token Discover sends; from, which says where it
// came from, for messages ("the token from $JUSTRUNIT_TOKEN"); and whether
// the user gave it (o.Token, tokenFile, which o or the environment names,
// or the environment) rather than it being read from stateTokenFile, the
// daemon's token file its state file names. A token file named explicitly
// must be read; the daemon's may not be readable by this user, who then
// sends no token.
func tokenFor(o DiscoverOptions, tokenFile, stateTokenFile string) (token, from string, explicit bool, err error) {
	switch {
	case o.Token != "":
		return o.Token, "the token given", true, nil
	case os.Getenv(EnvToken) != "":
		return os.Getenv(EnvToken), "the token from $" + EnvToken, true, nil
	case tokenFile != "":
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return "", "", false, fmt.Errorf("daemon token: %w", err)
		}
		return strings.TrimSpace(string(b)), "the token from " + tokenFile, true, nil
	case stateTokenFile != "":
		b, err := os.ReadFile(stateTokenFile)
		if err != nil {
			return "", fmt.Sprintf("no token: the daemon's token file cannot be read (%v); give the token in $%s", err, EnvToken), false, nil
		}
		return strings.TrimSpace(string(b)), "the token from the daemon's token file " + stateTokenFile, false, nil
	}
	return "", "", false, nil
}

func firstOf(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}

// writeReplace writes data to a new file in path's directory with mode and
// renames it to path.
func writeReplace(path string, data []byte, mode fs.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after the rename, nothing
	err = tmp.Chmod(mode)
	if err == nil {
		_, err = tmp.Write(data)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

package api

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/justrunit/justrunit"
)

// authenticate requires the bearer token (unless the server runs NoAuth).
func (s *Server) authenticate(h http.HandlerFunc) http.HandlerFunc {
	if s.cfg.NoAuth {
		return h
	}
	want := sha256.Sum256([]byte(s.cfg.Token))
	return func(w http.ResponseWriter, r *http.Request) {
		got, ok := bearer(r)
		// Comparing digests takes the same time whatever the length of
		// what was sent.
		sum := sha256.Sum256([]byte(got))
		if !ok || subtle.ConstantTimeCompare(sum[:], want[:]) != 1 {
			msg := "missing bearer token: send \"Authorization: Bearer TOKEN\" with the token from the daemon's token file"
			if ok {
				msg = "wrong bearer token"
			}
			s.writeError(w, r, &Error{Status: http.StatusUnauthorized, Code: CodeUnauthorized, Message: msg})
			return
		}
		h(w, r)
	}
}

// HealthProof is the proof that GET /healthz answers a challenge with
// (Health.Proof): the HMAC-SHA256, keyed by the token, of the daemon's ID,
// the Host the request carried (host: what the client dialled, as it sent
// it) and the challenge, in hex. Only a holder of the token can make it,
// and it tells nothing of the token; so a client sends its token to a
// server only once the server has proved it holds it already (Discover): a
// stale state file may name an address someone else now listens on. The
// daemon proves it only to a client that dialled one of its own names (see
// hostNames), so a server elsewhere cannot pass it on.
func HealthProof(token, daemon, host, challenge string) string {
	m := hmac.New(sha256.New, []byte(token))
	io.WriteString(m, "justrunit healthz 2\x00"+daemon+"\x00"+host+"\x00"+challenge)
	return hex.EncodeToString(m.Sum(nil))
}

// maxChallenge is the longest challenge /healthz answers.
const maxChallenge = 256

func bearer(r *http.Request) (string, bool) {
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}

// TokenBytes is the entropy of a generated token.
const TokenBytes = 32

// NewToken returns a random token: TokenBytes from crypto/rand, base64url.
func NewToken() string {
	b := make([]byte, TokenBytes)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (it crashes the program instead)
	return base64.RawURLEncoding.EncodeToString(b)
}

// LoadOrCreateToken returns the token in the file at path. When the file is
// missing or empty it writes a new token there, readable only by its owner
// (0600, directory 0700), and reports created. A token file others can read
// or write, or that another user owns, is refused: anyone who reads it
// controls the daemon, and its owner can read or replace it.
func LoadOrCreateToken(path string) (token string, created bool, err error) {
	if path == "" {
		return "", false, justrunit.Invalid("token-file", nil, "name the file that holds the API token")
	}
	tok, err := readToken(path)
	switch {
	case err == nil && tok != "":
		return tok, false, nil
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return "", false, err
	}
	empty := err == nil // an empty file is replaced; a missing one made
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", false, fmt.Errorf("token file: %w", err)
	}
	tok = NewToken()
	// Write a new file and rename it into place, so the token is never
	// visible with a wider mode or half written.
	tmp, err := os.CreateTemp(filepath.Dir(path), ".token-*")
	if err != nil {
		return "", false, fmt.Errorf("token file: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err == nil {
		_, err = tmp.WriteString(tok + "\n")
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		switch {
		case err == nil && empty:
			err = os.Rename(tmp.Name(), path)
		case err == nil:
			// Not Rename, which replaces: of two daemons starting at
			// once on a new data directory, the second would overwrite
			// the token the first already serves with. The second
			// takes the first's.
			err = os.Link(tmp.Name(), path)
			if err != nil && !errors.Is(err, fs.ErrExist) {
				// A file system without hard links: Rename, and the
				// race it leaves.
				err = os.Rename(tmp.Name(), path)
			}
			if errors.Is(err, fs.ErrExist) {
				if tok, err := readToken(path); err != nil || tok != "" {
					return tok, false, err
				}
				return "", false, fmt.Errorf("token file %s: made empty by another process while this one made it", path)
			}
		}
		if err != nil {
			return "", false, fmt.Errorf("token file: %w", err)
		}
	} else {
		tmp.Close()
		return "", false, fmt.Errorf("token file: %w", err)
	}
	return tok, true, nil
}

// readToken reads the token file at path after checking, on the open file,
// that only this user can read or change it; "" when it is empty.
func readToken(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
		return "", fmt.Errorf("token file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", justrunit.Invalid("token-file", path, "mode %04o lets other users read or change the token; chmod 600 it", fi.Mode().Perm())
	}
	if uid, ok := fileOwner(fi); ok && uid != os.Geteuid() {
		return "", justrunit.Invalid("token-file", path, "owned by uid %d, not by this user (uid %d), who can read or replace the token; chown it to this user or use another file", uid, os.Geteuid())
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// IsLoopback reports whether addr (HOST:PORT) binds the loopback interface
// only: "localhost" or a loopback IP. An empty host binds every interface
// and is not loopback; other names are not trusted to stay loopback.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}

package api

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
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
// or write is refused: anyone who reads it controls the daemon.
func LoadOrCreateToken(path string) (token string, created bool, err error) {
	if path == "" {
		return "", false, justrunit.Invalid("token-file", nil, "name the file that holds the API token")
	}
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		fi, serr := os.Stat(path)
		if serr != nil {
			return "", false, fmt.Errorf("token file: %w", serr)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			return "", false, justrunit.Invalid("token-file", path, "mode %04o lets other users read or change the token; chmod 600 it", fi.Mode().Perm())
		}
		if tok := strings.TrimSpace(string(b)); tok != "" {
			return tok, false, nil
		}
	case !errors.Is(err, fs.ErrNotExist):
		return "", false, fmt.Errorf("token file: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", false, fmt.Errorf("token file: %w", err)
	}
	tok := NewToken()
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
		if err == nil {
			err = os.Rename(tmp.Name(), path)
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

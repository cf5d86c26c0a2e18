package cloneside

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"sync"
)

// errLost is the error of a call whose connection ended before its reply
// came: the other process exited or closed it.
var errLost = errors.New("connection to the other process lost")

// message is one datagram received: its body and the descriptors it
// carried, which whoever takes the message owns.
type message struct {
	body []byte
	fds  []int
}

// caller sends requests as datagrams on a socket and hands each reply to
// the request of the same id, so that several calls can be under way at
// once. A reading goroutine runs until the socket ends (close, or the
// other side closed it).
type caller struct {
	c *net.UnixConn

	mu      sync.Mutex
	next    uint64
	waiting map[uint64]chan message
	err     error         // why reading ended, set before done is closed
	done    chan struct{} // closed when reading ended
}

// newCaller returns a caller on c; start starts its reading, which
// closing c ends.
func newCaller(c *net.UnixConn) *caller {
	return &caller{c: c, waiting: make(map[uint64]chan message), done: make(chan struct{})}
}

// start starts the reading goroutine. A reply sent unasked is expected
// before it (see expect).
func (k *caller) start() { go k.read() }

// expect registers a wait for the reply with id, one sent unasked.
func (k *caller) expect(id uint64) chan message {
	ch := make(chan message, 1)
	k.mu.Lock()
	k.waiting[id] = ch
	k.mu.Unlock()
	return ch
}

// call sends the request build makes for a new id, with fds (which stay
// the caller's), and waits for its reply until ctx ends or the socket
// does. The reply's descriptors are the caller's.
func (k *caller) call(ctx context.Context, build func(id uint64) any, fds ...int) (message, error) {
	k.mu.Lock()
	k.next++
	id := k.next
	k.mu.Unlock()
	ch := k.expect(id)
	if err := send(k.c, build(id), fds...); err != nil {
		k.forget(id, ch)
		select {
		case <-k.done:
			return message{}, k.lost()
		default:
		}
		return message{}, err
	}
	return k.wait(ctx, id, ch)
}

// wait waits for the reply to id on ch (see expect).
func (k *caller) wait(ctx context.Context, id uint64, ch chan message) (message, error) {
	select {
	case m := <-ch:
		return m, nil
	case <-ctx.Done():
		k.forget(id, ch)
		return message{}, ctx.Err()
	case <-k.done:
		// The reader may have handed the reply over just before it ended.
		select {
		case m := <-ch:
			return m, nil
		default:
		}
		k.forget(id, ch)
		return message{}, k.lost()
	}
}

// lost is the error of a call made or waiting once reading ended.
func (k *caller) lost() error {
	if k.err == nil || errors.Is(k.err, io.EOF) {
		return errLost
	}
	return errors.Join(errLost, k.err)
}

// forget gives up the wait for id; a reply that came meanwhile is let go.
func (k *caller) forget(id uint64, ch chan message) {
	k.mu.Lock()
	delete(k.waiting, id)
	k.mu.Unlock()
	select {
	case m := <-ch:
		closeFDs(m.fds)
	default:
	}
}

// read hands each reply to its waiter until the socket ends.
func (k *caller) read() {
	buf, oob := newBuffers()
	var err error
	for {
		var body []byte
		var fds []int
		body, fds, err = recv(k.c, buf, oob)
		if err != nil {
			break
		}
		var head struct {
			ID uint64 `json:"id"`
		}
		if json.Unmarshal(body, &head) != nil {
			closeFDs(fds)
			continue
		}
		k.mu.Lock()
		ch := k.waiting[head.ID]
		delete(k.waiting, head.ID)
		k.mu.Unlock()
		if ch == nil { // its caller gave up
			closeFDs(fds)
			continue
		}
		ch <- message{body: append([]byte(nil), body...), fds: fds}
	}
	k.err = err // read by others only once done is closed
	close(k.done)
}

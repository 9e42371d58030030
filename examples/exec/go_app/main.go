// A Go net/http server under prefork-server's exec mode, draining keep-alive
// connections on SIGTERM. Standard library only:
//
//	(cd examples/exec/go_app && go build -o /tmp/go_app .)
//	prefork-server --port 8000 --workers 4 -- /tmp/go_app
//
// The listening socket is fd 3 (systemd's socket activation), so the program
// binds nothing.
//
// Why not just srv.Shutdown(ctx)? It closes every idle keep-alive connection
// at once, and again every few milliseconds until none is left. A connection
// is idle between a response and the next request, and under load that
// request may already be on its way: the client gets a reset instead of an
// answer. srv.SetKeepAlivesEnabled(false) does the same: it calls the same
// closeIdleConns (net/http/server.go, Go 1.19: SetKeepAlivesEnabled and
// Shutdown). A request in flight during Shutdown is answered without
// `Connection: close`, and its connection is closed right after. This drain
// instead:
//  1. stops accepting by closing its own listener. That closes only this
//     process's fd. The master keeps its copy, so connections waiting in the
//     queue stay there for the next worker;
//  2. answers the next request on every open connection with
//     `Connection: close`. net/http closes the connection after that
//     response, and the client, having seen the header, reconnects to another
//     worker;
//  3. closes a connection only once it has been idle for idleGrace since the
//     drain began, or at drainTimeout;
//  4. exits once no connection is left.
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	idleGrace    = 3 * time.Second  // how long a connection may sit idle during the drain
	drainTimeout = 25 * time.Second // then close whatever is left (under the master's 30 s)
)

// The application: any http.Handler works here.
func hello(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, "Hello from worker %d\n", os.Getpid())
}

var draining atomic.Bool

// closeWhenDraining makes every response say `Connection: close` once the
// drain has begun (2). net/http then closes the connection after the response.
// A request already inside its handler when the drain began keeps its
// connection open. The next request on that connection gets the header, or
// the connection is closed once idle past the grace.
func closeWhenDraining(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if draining.Load() {
			w.Header().Set("Connection", "close")
		}
		h.ServeHTTP(w, r)
	})
}

// tracker follows every connection's state through Server.ConnState, and
// since when it has been in that state.
type tracker struct {
	mu    sync.Mutex
	conns map[net.Conn]connInfo
}

type connInfo struct {
	state http.ConnState
	since time.Time
}

func (t *tracker) hook(c net.Conn, state http.ConnState) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch state {
	case http.StateNew, http.StateActive, http.StateIdle:
		t.conns[c] = connInfo{state, time.Now()}
	case http.StateHijacked, http.StateClosed:
		delete(t.conns, c)
	}
}

// closeIdle closes the connections idle (or new, no request yet) for
// idleGrace, counted from the drain's start at the earliest (3). It returns
// how many connections are left.
func (t *tracker) closeIdle(drainStart time.Time) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	for c, info := range t.conns {
		since := info.since
		if since.Before(drainStart) {
			since = drainStart
		}
		if (info.state == http.StateIdle || info.state == http.StateNew) && time.Since(since) >= idleGrace {
			c.Close() // its goroutine sees the close and reports StateClosed
		}
	}
	return len(t.conns)
}

func main() {
	if os.Getenv("LISTEN_PID") != strconv.Itoa(os.Getpid()) || os.Getenv("LISTEN_FDS") != "1" {
		log.Fatal("go_app: run me under prefork-server (no socket on fd 3)")
	}
	// The master's listening socket. FileListener works on a dup of fd 3 and
	// makes it non-blocking itself, so fd 3 can be closed.
	f := os.NewFile(3, "listener")
	ln, err := net.FileListener(f)
	if err != nil {
		log.Fatal(err)
	}
	f.Close()

	mux := http.NewServeMux()
	mux.HandleFunc("/", hello)
	t := &tracker{conns: make(map[net.Conn]connInfo)}
	srv := &http.Server{Handler: closeWhenDraining(mux), ConnState: t.hook}

	// SIGTERM is prefork-server's stop signal; Ctrl-C drains the same way.
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case <-stop:
	case err := <-served:
		log.Fatal(err)
	}

	// The drain. A second signal (Ctrl-C twice) gives up on it.
	go func() {
		<-stop
		os.Exit(1)
	}()
	drainStart := time.Now()
	draining.Store(true)
	// 1. Stop accepting. Serve returns once Accept fails. Every connection it
	//    accepted is in the tracker by then: Serve reports StateNew before
	//    it starts the connection's goroutine.
	ln.Close()
	<-served
	// 3. and 4. Close connections idle past the grace, until none is left or
	//    the deadline comes.
	deadline := drainStart.Add(drainTimeout)
	for t.closeIdle(drainStart) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	cut := t.closeIdle(drainStart) > 0
	// Nothing is left by now, except after the deadline. Shutdown waits a
	// little for requests still running, then Close cuts the rest.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil && !errors.Is(err, net.ErrClosed) {
		srv.Close()
	}
	if cut {
		// Connections were still busy at the deadline: the exit code says so.
		log.Printf("go_app: connections still open after %s; closed", drainTimeout)
		os.Exit(1)
	}
}

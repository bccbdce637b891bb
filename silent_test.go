//go:build linux

package main

import (
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
)

// silentClients is how many clients TestRouteSilentClientsReleased
// opens: each holds two descriptors of the test process (its own socket
// and the proxy's), 4,000 in all, well within the 20,000 open files this
// machine allows a process (the test fails early below that).
const silentClients = 2000

// TestRouteSilentClientsReleased: 2,000 clients that connect to an SNI
// port and never send a byte are each closed when preread_timeout
// passes (none pins the library's peeking goroutine), counted as
// unrouted with reason preread_timeout, and the proxy's goroutines and
// sockets come back to their baseline (#10, "Also").
func TestRouteSilentClientsReleased(t *testing.T) {
	if free := fileLimit(t) - uint64(countSockets()); free < 3*silentClients {
		t.Skipf("the open-files limit leaves %d descriptors; %d silent clients need %d", free, silentClients, 3*silentClients)
	}
	a := tlsBackend(t, "a")
	port := freePort(t)
	srv, _ := startProxy(t, "apps:\n"+appYAML("a", []int{port}, []string{a.addr}, "sni: [a.test]\npreread_timeout: 1s"))
	baseG, baseS := runtime.NumGoroutine(), countSockets()

	conns := make([]net.Conn, silentClients)
	for i := range conns {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		conns[i] = c
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	// Every client is accepted and waits in the library's peek, each on
	// a goroutine. (Less a few: the baseline may count goroutines of the
	// test before, still on their way out.)
	waitFor(t, 10*time.Second, "every silent client to be accepted", func() bool {
		return runtime.NumGoroutine() >= baseG+silentClients-20
	})

	// Each one sees EOF once preread_timeout passes, without sending.
	var wg sync.WaitGroup
	errs := make(chan error, silentClients)
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(time.Now().Add(20 * time.Second))
			if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
				errs <- fmt.Errorf("got %q, %v; want EOF", b, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, c := range conns {
		c.Close()
	}
	waitFor(t, 10*time.Second, "goroutines and sockets back to baseline", func() bool {
		return runtime.NumGoroutine() <= baseG+2 && countSockets() <= baseS
	})
	if l := srv.listenerStats(); len(l) != 1 || l[0].UnroutedPrereadTimeout != silentClients {
		t.Errorf("unrouted by preread_timeout: %+v, want %d", l, silentClients)
	}
}

// fileLimit is this process's open-files limit.
func fileLimit(t *testing.T) uint64 {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	return lim.Cur
}

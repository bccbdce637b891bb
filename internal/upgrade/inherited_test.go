package upgrade

import (
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// rawDup returns a close-on-exec duplicate of c's descriptor that no
// *os.File owns, as a child sees the descriptors it inherits: FromEnv
// closes it, and no finalizer may close the number again.
func rawDup(t *testing.T, c syscall.Conn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	dup := -1
	var errno syscall.Errno
	if err := rc.Control(func(fd uintptr) {
		r, _, e := syscall.Syscall(syscall.SYS_FCNTL, fd, syscall.F_DUPFD_CLOEXEC, 0)
		dup, errno = int(r), e
	}); err != nil {
		t.Fatal(err)
	}
	if errno != 0 {
		t.Fatal(errno)
	}
	return dup
}

// readyPipe returns the read end of a pipe and an unowned descriptor of
// its write end, for FromEnv to take.
func readyPipe(t *testing.T) (*os.File, int) {
	t.Helper()
	rd, wr, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rd.Close() })
	fd := rawDup(t, wr)
	wr.Close()
	return rd, fd
}

// readAll reads what the child side wrote until it closed the pipe.
func readAll(t *testing.T, rd *os.File) string {
	t.Helper()
	rd.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(rd)
	if err != nil {
		t.Fatalf("ready pipe: %v", err)
	}
	return string(b)
}

func assertEnvCleared(t *testing.T) {
	t.Helper()
	for _, k := range []string{envReadyFD, envFDs} {
		if v, ok := os.LookupEnv(k); ok {
			t.Errorf("FromEnv left %s=%q", k, v)
		}
	}
}

func TestFromEnvWithoutParent(t *testing.T) {
	for _, k := range []string{envReadyFD, envFDs} {
		if _, ok := os.LookupEnv(k); ok {
			t.Fatalf("%s set in the test environment", k)
		}
	}
	in, err := FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	var none *Inherited
	for _, in := range []*Inherited{in, none} {
		if in.HasParent() {
			t.Error("HasParent true without a parent")
		}
		if ln := in.Listener("127.0.0.1:1"); ln != nil {
			t.Errorf("Listener = %v without a parent", ln)
		}
		if err := in.Ready(); err != nil {
			t.Errorf("Ready: %v", err)
		}
	}
}

// TestFromEnvInProcess plays both sides in one process: the test passes
// two sockets as a parent would, FromEnv takes them.
func TestFromEnvInProcess(t *testing.T) {
	lnA, lnB := listenParent(t), listenParent(t)
	addrA, addrB := lnA.Addr().String(), lnB.Addr().String()
	rd, readyFD := readyPipe(t)
	t.Setenv(envReadyFD, strconv.Itoa(readyFD))
	t.Setenv(envFDs, addrA+"="+strconv.Itoa(rawDup(t, lnA))+","+addrB+"="+strconv.Itoa(rawDup(t, lnB)))

	in, err := FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	assertEnvCleared(t)
	if !in.HasParent() {
		t.Fatal("HasParent false")
	}
	if ln := in.Listener("127.0.0.1:1"); ln != nil {
		t.Errorf("Listener for an address not passed = %v", ln)
	}
	ln := in.Listener(addrA)
	if ln == nil {
		t.Fatalf("no listener for %s", addrA)
	}
	defer ln.Close()
	if _, ok := ln.(*net.TCPListener); !ok || ln.Addr().String() != addrA {
		t.Fatalf("listener %T on %s, want *net.TCPListener on %s", ln, ln.Addr(), addrA)
	}
	if again := in.Listener(addrA); again != nil {
		t.Error("Listener returned the same address twice")
	}
	go serveGreeting(ln, "child")
	lnA.Close()
	mustGreet(t, addrA, "child")

	if err := in.Ready(); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, rd); got != string(rune(readyByte)) {
		t.Errorf("parent read %q from the ready pipe, want one ready byte", got)
	}
	if err := in.Ready(); err != nil {
		t.Errorf("second Ready: %v", err)
	}
	if ln := in.Listener(addrB); ln != nil {
		t.Error("Listener after Ready returned a listener")
	}
	lnB.Close() // the last copy, since Ready closed the untaken one
	if _, err := net.Dial("tcp", addrB); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial the untaken %s: %v, want connection refused", addrB, err)
	}
}

// TestFromEnvBadDescriptor: a passed descriptor that is not a listening
// socket fails FromEnv and closes the ready pipe, so the parent learns at
// once.
func TestFromEnvBadDescriptor(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "file"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ln := listenParent(t)
	rd, readyFD := readyPipe(t)
	t.Setenv(envReadyFD, strconv.Itoa(readyFD))
	t.Setenv(envFDs, "a:1="+strconv.Itoa(rawDup(t, ln))+",b:2="+strconv.Itoa(rawDup(t, f)))

	if _, err := FromEnv(); err == nil {
		t.Fatal("FromEnv accepted a regular file as a listener")
	}
	assertEnvCleared(t)
	if got := readAll(t, rd); got != "" {
		t.Errorf("parent read %q, want end-of-file", got)
	}
}

func TestFromEnvMalformed(t *testing.T) {
	// 1000 is never opened by the test: a malformed variable must fail
	// before any descriptor is used.
	for _, tc := range []struct{ ready, fds string }{
		{"", "a:1=1001"},
		{"x", "a:1=1001"},
		{"1", "a:1=1001"},
		{"1000", "a:1"},
		{"1000", "=1001"},
		{"1000", "a:1=2"},
		{"1000", "a:1=1001,a:1=1002"},
		{"1000", "a:1=1001,b:1=1001"},
		{"1000", "a:1=1000"},
	} {
		// FromEnv unset both variables in the previous round.
		if tc.ready != "" {
			t.Setenv(envReadyFD, tc.ready)
		}
		t.Setenv(envFDs, tc.fds)
		if _, err := FromEnv(); err == nil {
			t.Errorf("FromEnv accepted ready=%q fds=%q", tc.ready, tc.fds)
		}
		assertEnvCleared(t)
	}
}

func TestParseFDs(t *testing.T) {
	got, err := parseFDs("127.0.0.1:5001=4,:5002=5,[::1]:5003=6")
	if err != nil {
		t.Fatal(err)
	}
	want := []passedFD{{"127.0.0.1:5001", 4}, {":5002", 5}, {"[::1]:5003", 6}}
	if !slices.Equal(got, want) {
		t.Errorf("parseFDs = %v, want %v", got, want)
	}
}

func TestChildEnv(t *testing.T) {
	got := childEnv([]string{"A=1", envFDs + "=stale=9", "B=2", envReadyFD + "=9"}, ":80=4")
	want := []string{"A=1", "B=2", envReadyFD + "=3", envFDs + "=:80=4"}
	if !slices.Equal(got, want) {
		t.Errorf("childEnv = %q, want %q", got, want)
	}
}

// TestDupListenerKeepsNonblocking: os/exec calls Fd on what it passes;
// that must not switch the parent's shared socket to blocking mode.
func TestDupListenerKeepsNonblocking(t *testing.T) {
	ln := listenParent(t)
	f, err := dupListener(ln.Addr().String(), ln)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Fd()
	rc, err := ln.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var flags int
	var errno syscall.Errno
	rc.Control(func(fd uintptr) {
		r, _, e := syscall.Syscall(syscall.SYS_FCNTL, fd, syscall.F_GETFL, 0)
		flags, errno = int(r), e
	})
	if errno != 0 {
		t.Fatal(errno)
	}
	if flags&syscall.O_NONBLOCK == 0 {
		t.Error("listener socket in blocking mode after Fd on its duplicate")
	}
}

func TestDupListenerRejects(t *testing.T) {
	ln := listenParent(t)
	for _, addr := range []string{"", "a,b"} {
		if f, err := dupListener(addr, ln); err == nil {
			f.Close()
			t.Errorf("dupListener accepted address %q", addr)
		}
	}
	if _, err := dupListener("a:1", nil); err == nil {
		t.Error("dupListener accepted a nil listener")
	}
	closed := listenParent(t)
	closed.Close()
	if _, err := dupListener("a:1", closed); err == nil {
		t.Error("dupListener accepted a closed listener")
	}
}

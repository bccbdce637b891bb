package main

import (
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestBinaryShutdownAbortsDials: a client whose target black-holes
// (dial_timeout 30s) does not hold the exit for shutdown_timeout (30s):
// on SIGTERM its dial is aborted at once and it is closed (EOF), counted
// in the stop line, while a connection already relayed drains as before;
// the target is not blamed (#10 item 2).
func TestBinaryShutdownAbortsDials(t *testing.T) {
	hole := blackholeAddr(t)
	be := startBackend(t, echoHandler)
	holePort, livePort, admin := freePort(t), freePort(t), fmt.Sprintf("127.0.0.1:%d", freePort(t))
	path := writeConfig(t, "admin: "+admin+"\nshutdown_timeout: 30s\napps:\n"+
		appYAML("hole", []int{holePort}, []string{hole}, "dial_timeout: 30s\naccess_log: true")+
		appYAML("live", []int{livePort}, []string{be.addr}, ""))
	cmd, out := runBinary(t, "-c", path)
	waitListening(t, livePort)
	defer func() {
		if t.Failed() {
			t.Logf("proxy log:\n%s", out)
		}
	}()
	held := heldEcho(t, livePort, "before")
	waiting := dialProxy(t, holePort)
	waiting.Write([]byte("hello\n"))
	waitFor(t, 10*time.Second, "the dial to the black hole to start", func() bool {
		return statusTarget(t, binaryStatus(t, admin), "hole", hole)["dials"].(float64) == 1
	})

	cmd.Process.Signal(syscall.SIGTERM)
	// Well below the 30 s the dial would take: aborted at once.
	waiting.SetReadDeadline(time.Now().Add(10 * time.Second))
	if b, err := io.ReadAll(waiting); err != nil || len(b) != 0 {
		t.Fatalf("the client whose dial was in flight: %q, %v; want EOF", b, err)
	}
	held.Write([]byte("during\n"))
	if got := readLine(t, held); got != "during" {
		t.Fatalf("relayed connection while draining: %q", got)
	}
	if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", livePort)); err == nil {
		c.Close()
		t.Fatal("the listeners still accept after SIGTERM")
	}
	held.Close()
	waitExit(t, cmd, 10*time.Second, out)
	log := out.String()
	for _, want := range []string{
		"msg=stopped drained=1 cut=0 dials_aborted=1",
		`level=WARN msg="dial aborted by shutdown, closing the client" app=hole client=127.0.0.1:`,
		`msg=connection app=hole`, `result="dial aborted: shutting down"`,
	} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q", want)
		}
	}
	for _, not := range []string{"all targets failed", "target down"} {
		if strings.Contains(log, not) {
			t.Errorf("log has %q: the aborted dial was taken for the target's failure", not)
		}
	}
}

//go:build linux

package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"
	"time"
)

// notification is one datagram sent to the fake NOTIFY_SOCKET, with the
// sender's PID as the kernel vouches for it (SO_PASSCRED).
type notification struct {
	pid  int
	text string
}

// fakeNotifySocket listens where NOTIFY_SOCKET will point, as systemd
// does, and passes on every datagram with its sender's PID.
func fakeNotifySocket(t *testing.T) (string, <-chan notification) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	raw, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	raw.Control(func(fd uintptr) {
		err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_PASSCRED, 1)
	})
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan notification, 16)
	go func() {
		buf, oob := make([]byte, 4096), make([]byte, syscall.CmsgSpace(syscall.SizeofUcred))
		for {
			n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
			if err != nil {
				close(ch)
				return
			}
			pid := -1
			if msgs, err := syscall.ParseSocketControlMessage(oob[:oobn]); err == nil && len(msgs) == 1 {
				if cred, err := syscall.ParseUnixCredentials(&msgs[0]); err == nil {
					pid = int(cred.Pid)
				}
			}
			ch <- notification{pid, string(buf[:n])}
		}
	}()
	return path, ch
}

// TestBinarySdNotify runs the built binary with a fake NOTIFY_SOCKET and
// checks what a Type=notify unit needs: READY=1 once serving (the PID
// file written before), RELOADING=1 then READY=1 on SIGHUP, after a
// SIGUSR2 upgrade MAINPID=<new pid> from the new process, which wrote
// the PID file first, and nothing from the old one as it drains, and
// STOPPING=1 on SIGTERM (#10 item 5).
func TestBinarySdNotify(t *testing.T) {
	sock, notes := fakeNotifySocket(t)
	be := startBackend(t, echoHandler)
	port := freePort(t)
	pidFile := filepath.Join(t.TempDir(), "tcpproxy.pid")
	path := writeConfig(t, "apps:\n"+appYAML("web", []int{port}, []string{be.addr}, ""))
	cmd, out := runBinaryEnv(t, []string{"NOTIFY_SOCKET=" + sock}, "-c", path, "-pid-file", pidFile)
	defer func() {
		if t.Failed() {
			t.Logf("proxy log:\n%s", out)
		}
	}()
	next := func(what string) notification {
		t.Helper()
		select {
		case n := <-notes:
			return n
		case <-time.After(20 * time.Second):
			t.Fatalf("no notification: waited for %s", what)
		}
		return notification{}
	}
	expect := func(pid int, want *regexp.Regexp) notification {
		t.Helper()
		n := next(want.String())
		if n.pid != pid || !want.MatchString(n.text) {
			t.Fatalf("notification %q from pid %d, want %q from pid %d", n.text, n.pid, want, pid)
		}
		return n
	}
	oldPID := cmd.Process.Pid
	expect(oldPID, regexp.MustCompile(`^READY=1$`))
	if got := readPIDFile(pidFile); got != oldPID {
		t.Errorf("PID file holds %d at READY=1, want %d", got, oldPID)
	}
	heldEcho(t, port, "ready").Close()

	cmd.Process.Signal(syscall.SIGHUP)
	expect(oldPID, regexp.MustCompile(`^RELOADING=1\nMONOTONIC_USEC=[0-9]+$`))
	expect(oldPID, regexp.MustCompile(`^READY=1$`))

	cmd.Process.Signal(syscall.SIGUSR2)
	n := next("the new process's MAINPID")
	newPID := n.pid
	if newPID == oldPID || n.text != fmt.Sprintf("MAINPID=%d\nREADY=1", newPID) {
		t.Fatalf("after the upgrade: %q from pid %d (old %d)", n.text, n.pid, oldPID)
	}
	newProc, _ := os.FindProcess(newPID)
	t.Cleanup(func() { newProc.Kill() }) // it shares the test's output pipe
	if got := readPIDFile(pidFile); got != newPID {
		t.Errorf("PID file holds %d when the new process says MAINPID=%d: it must be written first", got, newPID)
	}
	// The old process drains (nothing is open) and exits. (cmd.Wait would
	// wait for the new process too: it shares the output pipe.)
	waitFor(t, 20*time.Second, "the old process to exit", func() bool { return processGone(oldPID) })
	heldEcho(t, port, "upgraded").Close()

	newProc.Signal(syscall.SIGTERM)
	expect(newPID, regexp.MustCompile(`^STOPPING=1$`))
	waitFor(t, 20*time.Second, "the new process to exit", func() bool { return processGone(newPID) })
	select {
	case n, ok := <-notes:
		if ok {
			t.Errorf("unexpected notification %q from pid %d", n.text, n.pid)
		}
	default:
	}
}

package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"unsafe"
)

// netnsEnv marks the copy of the test binary that runs in a network
// namespace of its own.
const netnsEnv = "TCPPROXY_TEST_IN_NETNS"

// inNetns runs the test named name again, alone, in a new network
// namespace whose only interface is loopback, and reports whether the
// caller is that copy (and should run the test's body). Wildcard
// addresses (0.0.0.0, ::, an unset listen) can be bound there without
// exposing a port on the machine's network.
func inNetns(t *testing.T, name string) bool {
	t.Helper()
	if os.Getenv(netnsEnv) != "" {
		if err := loopbackUp(); err != nil {
			t.Fatalf("bring up lo in the test's network namespace: %v", err)
		}
		return true
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to make a network namespace")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^"+name+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), netnsEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	out, err := cmd.CombinedOutput()
	if cmd.ProcessState == nil && errors.Is(err, syscall.EPERM) {
		t.Skipf("cannot make a network namespace here: %v", err)
	}
	t.Logf("in a network namespace of its own:\n%s", out)
	if err != nil {
		t.Fatalf("%s in a network namespace: %v", name, err)
	}
	return false
}

// loopbackUp sets the loopback interface up (a new network namespace
// starts with it down), as `ip link set lo up` does.
func loopbackUp() error {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	var ifr [40]byte // struct ifreq: the name, then the flags
	copy(ifr[:syscall.IFNAMSIZ], "lo")
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), syscall.SIOCGIFFLAGS, uintptr(unsafe.Pointer(&ifr[0]))); e != 0 {
		return e
	}
	binary.NativeEndian.PutUint16(ifr[syscall.IFNAMSIZ:], binary.NativeEndian.Uint16(ifr[syscall.IFNAMSIZ:])|syscall.IFF_UP)
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), syscall.SIOCSIFFLAGS, uintptr(unsafe.Pointer(&ifr[0]))); e != 0 {
		return e
	}
	return nil
}

// TestListenFamilies checks, where only loopback exists, that listen:
// 0.0.0.0 binds IPv4 only (an IPv6 client is refused, not relayed),
// "::" IPv6 only and an unset listen both, so that 0.0.0.0:P beside
// [::]:P or [::1]:P passes -check and serves each family from its own
// app; and that listenConflict, which -check uses, says of every pair
// of hosts what the kernel says when both are bound.
func TestListenFamilies(t *testing.T) {
	if !inNetns(t, "TestListenFamilies") {
		return
	}
	if ln, err := net.Listen("tcp6", "[::1]:0"); err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	} else {
		ln.Close()
	}
	t.Run("kernel agrees with listenConflict", func(t *testing.T) {
		hosts := []string{"", "0.0.0.0", "::", "127.0.0.1", "127.0.0.2", "::1", "::1%lo", "::ffff:127.0.0.1"}
		listen := listenFunc(false, nil)
		for _, a := range hosts {
			for _, b := range hosts {
				first, err := listen(listenNetwork(net.JoinHostPort(a, "0")), net.JoinHostPort(a, "0"))
				if err != nil {
					t.Fatal(err)
				}
				port := strconv.Itoa(first.Addr().(*net.TCPAddr).Port)
				second, err := listen(listenNetwork(net.JoinHostPort(b, port)), net.JoinHostPort(b, port))
				if err == nil {
					second.Close()
				} else if !errors.Is(err, syscall.EADDRINUSE) {
					t.Fatal(err)
				}
				first.Close()
				if kernel := err != nil; kernel != listenConflict(a, b) {
					t.Errorf("%q then %q on one port: the kernel says clash=%v, listenConflict says %v", a, b, kernel, !kernel)
				}
			}
		}
	})
	t.Run("listen 0.0.0.0 is IPv4 only", func(t *testing.T) {
		be, port := startBackend(t, namedHandler("v4")), freePort(t)
		startProxy(t, fmt.Sprintf("apps:\n- {name: only4, listen: 0.0.0.0, ports: [%d], targets: [%q], proxy_protocol: 2}\n", port, be.addr))
		if got := readLine(t, dialProxy(t, port)); got != "v4" {
			t.Fatalf("IPv4 client served by %q", got)
		}
		if conn, err := net.Dial("tcp", net.JoinHostPort("::1", strconv.Itoa(port))); err == nil {
			conn.Close()
			t.Errorf("an IPv6 client of listen: 0.0.0.0 was relayed")
		} else if !isRefused(err) {
			t.Errorf("an IPv6 client of listen: 0.0.0.0: %v, want refused", err)
		}
	})
	t.Run("each family to its own app", func(t *testing.T) {
		v4, v6, loop6, all := startBackend(t, namedHandler("v4")), startBackend(t, namedHandler("v6")), startBackend(t, namedHandler("loop6")), startBackend(t, namedHandler("all"))
		p, q, r := freePort(t), freePort(t), freePort(t)
		yaml := fmt.Sprintf(`apps:
- {name: v4, listen: 0.0.0.0, ports: [%d, %d], targets: [%q]}
- {name: v6, listen: "::", ports: [%d], targets: [%q]}
- {name: loop6, listen: "[::1]", ports: [%d], targets: [%q]}
- {name: all, ports: [%d], targets: [%q]}
`, p, q, v4.addr, p, v6.addr, q, loop6.addr, r, all.addr)
		if code, out := checkConfig(t, yaml); code != 0 {
			t.Fatalf("-check refused a config the kernel accepts:\n%s", out)
		}
		startProxy(t, yaml)
		for _, c := range []struct {
			host string
			port int
			want string
		}{{"127.0.0.1", p, "v4"}, {"::1", p, "v6"}, {"127.0.0.1", q, "v4"}, {"::1", q, "loop6"}, {"127.0.0.1", r, "all"}, {"::1", r, "all"}} {
			conn, err := net.Dial("tcp", net.JoinHostPort(c.host, strconv.Itoa(c.port)))
			if err != nil {
				t.Fatalf("%s port %d: %v", c.host, c.port, err)
			}
			if got := readLine(t, conn); got != c.want {
				t.Errorf("%s port %d: served by %q, want %q", c.host, c.port, got, c.want)
			}
			conn.Close()
		}
	})
}

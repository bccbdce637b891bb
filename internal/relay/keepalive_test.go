//go:build linux

package relay

import (
	"syscall"
	"testing"
	"time"
)

func TestSetKeepAlive(t *testing.T) {
	ln := listen(t)
	for _, tc := range []struct {
		name     string
		period   time.Duration
		wantOn   bool
		wantIdle int // TCP_KEEPIDLE seconds, checked when on
	}{
		{"off", -1, false, 0},
		{"default", 0, true, 60},
		{"period", 42 * time.Second, true, 42},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := connPair(t, ln) // dialed: Go turns keep-alive on by default
			if err := SetKeepAlive(c, tc.period); err != nil {
				t.Fatal(err)
			}
			rc, err := c.SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			var on, idle int
			var getErr error
			err = rc.Control(func(fd uintptr) {
				on, getErr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
				if getErr == nil {
					idle, getErr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE)
				}
			})
			if err != nil || getErr != nil {
				t.Fatal(err, getErr)
			}
			if (on != 0) != tc.wantOn {
				t.Errorf("SO_KEEPALIVE = %d, want on %v", on, tc.wantOn)
			}
			if tc.wantOn && idle != tc.wantIdle {
				t.Errorf("TCP_KEEPIDLE = %d, want %d", idle, tc.wantIdle)
			}
		})
	}
}

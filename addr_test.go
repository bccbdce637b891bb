package main

import "testing"

// TestListenConflictAndNetwork pins the listen rules the kernel cannot
// show on loopback alone (TestListenFamilies checks the rest against
// the kernel): host names, link-local zones, IPv4-mapped addresses.
func TestListenConflictAndNetwork(t *testing.T) {
	conflicts := []struct {
		a, b string
		want bool
	}{
		{"", "10.0.0.1", true},
		{"", "fe80::1%eth0", true},
		{"0.0.0.0", "::", false},
		{"0.0.0.0", "::1", false},
		{"0.0.0.0", "10.0.0.1", true},
		{"::", "2001:db8::1", true},
		{"::", "10.0.0.1", false},
		{"10.0.0.1", "10.0.0.2", false},
		{"10.0.0.1", "::ffff:10.0.0.1", true},
		{"fe80::1%eth0", "fe80::1%eth1", false},
		{"fe80::1%eth0", "fe80::1%eth0", true},
		{"fe80::1%eth0", "fe80::1", true},
		{"::1%lo", "::1", true},
		{"localhost", "LocalHost.", true},
		{"localhost", "0.0.0.0", true},
		{"localhost", "::", true},
		{"localhost", "127.0.0.2", false},
		{"a.example", "b.example", false},
	}
	for _, c := range conflicts {
		if got := listenConflict(c.a, c.b); got != c.want {
			t.Errorf("listenConflict(%q, %q) = %v, want %v", c.a, c.b, got, c.want)
		}
		if got := listenConflict(c.b, c.a); got != c.want {
			t.Errorf("listenConflict(%q, %q) = %v, want %v", c.b, c.a, got, c.want)
		}
	}
	networks := map[string]string{
		":80": "tcp", "0.0.0.0:80": "tcp4", "127.0.0.1:80": "tcp4", "[::ffff:127.0.0.1]:80": "tcp4",
		"[::]:80": "tcp6", "[::1]:80": "tcp6", "[fe80::1%eth0]:80": "tcp6", "localhost:80": "tcp",
	}
	for addr, want := range networks {
		if got := listenNetwork(addr); got != want {
			t.Errorf("listenNetwork(%q) = %q, want %q", addr, got, want)
		}
	}
}

package admin

import (
	"testing"
	"time"
)

func TestHumanBytes(t *testing.T) {
	tests := []struct {
		n    int64
		want string
	}{
		{0, "0 B"},
		{1023, "1023 B"},
		{1024, "1.00 KiB"},
		{1536, "1.50 KiB"},
		{200 << 20, "200.0 MiB"},
		{5 << 30, "5.00 GiB"},
		{1 << 62, "4.00 EiB"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := humanBytes(tt.n); got != tt.want {
				t.Errorf("humanBytes(%d) = %q, want %q", tt.n, got, tt.want)
			}
		})
	}
}

func TestHumanDuration(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{-time.Second, "0s"},
		{1400 * time.Millisecond, "1s"},
		{5*time.Minute + 12*time.Second, "5m12s"},
		{3*time.Hour + 4*time.Minute + 59*time.Second, "3h4m"},
		{50 * time.Hour, "2d2h"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := humanDuration(tt.d); got != tt.want {
				t.Errorf("humanDuration(%v) = %q, want %q", tt.d, got, tt.want)
			}
		})
	}
}

func TestListenHost(t *testing.T) {
	tests := map[string]string{"": "*", "127.0.0.1": "127.0.0.1", "::1": "[::1]", "proxy.local": "proxy.local"}
	for in, want := range tests {
		t.Run(want, func(t *testing.T) {
			if got := listenHost(in); got != want {
				t.Errorf("listenHost(%q) = %q, want %q", in, got, want)
			}
		})
	}
}

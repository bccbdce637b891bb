package names

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
	}{
		{in: "db.example.com", want: "db.example.com"},
		{in: "DB.Example.COM.", want: "db.example.com"},
		{in: "*.example.com", want: "*.example.com"},
		{in: "localhost", want: "localhost"},
		{in: "", err: "empty name"},
		{in: ".", err: "empty name"},
		{in: "a..b", err: "empty label"},
		{in: ".a.b", err: "empty label"},
		{in: "127.0.0.1", err: "IP address"},
		{in: "::1", err: "IP address"},
		{in: "[::1]", err: "IP address"},
		{in: strings.Repeat("a", 64) + ".com", err: "longer than 63"},
		{in: strings.Repeat("abcdefghi.", 25) + "abcd", err: "longer than 253"},
		{in: "*", err: "'*'"},
		{in: "a.*.com", err: "'*'"},
		{in: "*a.example.com", err: "'*'"},
		{in: "*.*.example.com", err: "'*'"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := Parse(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("Parse(%q) = %q, %v; want an error containing %q", tc.in, got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Parse(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestLookup(t *testing.T) {
	var tab Table[string]
	// The wildcard is added first: the exact name must still win.
	for _, n := range []string{"*.example.com", "a.example.com", "example.com", "*.b.example.com"} {
		if !tab.Add(n, n) {
			t.Fatalf("Add(%q) = false", n)
		}
	}
	if tab.Add("a.example.com", "again") || tab.Add("*.example.com", "again") {
		t.Fatal("Add accepted a name twice")
	}
	if tab.Len() != 4 {
		t.Fatalf("Len = %d", tab.Len())
	}
	for host, want := range map[string]string{
		"a.example.com":     "a.example.com",
		"A.EXAMPLE.COM.":    "a.example.com",
		"x.example.com":     "*.example.com",
		"X.Example.Com":     "*.example.com",
		"example.com":       "example.com",
		"c.b.example.com":   "*.b.example.com",
		"d.c.b.example.com": "",
		"a.b.c.example.com": "",
		"other.org":         "",
		".example.com":      "",
		"":                  "",
		"127.0.0.1":         "",
	} {
		got, ok := tab.Lookup(host)
		if got != want || ok != (want != "") {
			t.Errorf("Lookup(%q) = %q, %v; want %q", host, got, ok, want)
		}
	}
	var empty Table[int]
	if _, ok := empty.Lookup("a.b"); ok {
		t.Error("the empty table matched")
	}
}

func TestHTTPHost(t *testing.T) {
	for in, want := range map[string]string{
		"example.com":      "example.com",
		"example.com:8080": "example.com",
		"[::1]:80":         "::1",
		"[::1]":            "::1",
		"":                 "",
	} {
		if got := HTTPHost(in); got != want {
			t.Errorf("HTTPHost(%q) = %q, want %q", in, got, want)
		}
	}
}

func BenchmarkLookup(b *testing.B) {
	var tab Table[int]
	tab.Add("a.example.com", 1)
	tab.Add("*.example.com", 2)
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := tab.Lookup("x.example.com"); !ok {
			b.Fatal("no match")
		}
	}
}

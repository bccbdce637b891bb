//go:build linux

// Command soak is a soak and chaos test of the tcpproxy binary.
//
// It starts three stable backends and a fourth "toggler" target in
// process on loopback, runs the proxy in front of them, and for the
// duration keeps thousands of long-lived connections streaming verified
// data both ways and makes short connections at a steady rate, while it
// kills and restarts backends, reloads the proxy's config between two
// target sets, and flips the toggler between refusing and black-holing.
// Connections go in through two plain ports, a port shared by two apps
// routed by TLS server name (a ClientHello first; one app sends a PROXY
// header on to the backend), and a port whose clients send a PROXY
// header as a load balancer would (entry.go); each backend checks that
// what came before the data is what that entry must deliver.
// With -edges (on by default) every successful reload also moves the
// plain app's listen host (127.0.0.1, unset, localhost) under its
// clients, every third reload adds a port the soak holds and must fail
// without changing a listener or a target, and slow readers pull 3 MiB
// responses through an app with idle_timeout: 2s at about 300 KiB/s,
// each of which must arrive whole (slowread.go).
// Every connection that ends early is classified (cut with its backend,
// a proxy failure, or no healthy target); the proxy's goroutines,
// descriptors and RSS are sampled and must come back to their baseline.
// It prints a summary table and exits 0 on PASS, 1 on FAIL.
//
// Usage:
//
//	go build -o /tmp/x/tcpproxy . && go run ./soak -proxy /tmp/x/tcpproxy [-duration 10m] [-conns 2000] [-churn 200] [-seed N] [-edges=false] [-json] [-v]
//
// or scripts/soak.sh, which builds the proxy first. It is Linux-only,
// like the tests: it reads /proc and uses Linux's socket flags
// (SOCK_CLOEXEC) and RLIMIT_NOFILE's Linux type.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"time"
)

func main() {
	os.Exit(mainStatus(os.Args[1:], os.Stdout, os.Stderr))
}

// mainStatus is main with its exit status returned.
func mainStatus(args []string, stdout, stderr io.Writer) int {
	cfg := defaultConfig()
	cfg.out = stderr
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.proxyBin, "proxy", "", "the tcpproxy binary to test (required)")
	fs.DurationVar(&cfg.duration, "duration", cfg.duration, "how long traffic and chaos run, after the warm-up")
	fs.IntVar(&cfg.conns, "conns", cfg.conns, "long-lived connections to keep open")
	fs.IntVar(&cfg.churn, "churn", cfg.churn, "short connections per second")
	seed := fs.Uint64("seed", 0, "seed of the data, the schedule of the chaos and the ports (0: from the clock)")
	asJSON := fs.Bool("json", false, "print the summary as JSON too")
	fs.BoolVar(&cfg.verbose, "v", false, "print every chaos event")
	fs.BoolVar(&cfg.edges, "edges", cfg.edges, "also reload with listen changes and with a port the soak holds (the reload must fail, changing nothing), and drive slow readers under idle_timeout")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "soak: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if cfg.proxyBin == "" || cfg.duration <= 0 || cfg.conns < 0 || cfg.churn < 0 {
		fmt.Fprintln(stderr, "soak: -proxy is required; -duration must be positive, -conns and -churn not negative")
		return 2
	}
	cfg.seed = *seed
	if cfg.seed == 0 {
		cfg.seed = uint64(time.Now().UnixNano())
	}
	// Short runs sample more often, so every quarter of the run has
	// readings for the RSS check.
	cfg.sampleEvery = min(cfg.sampleEvery, max(cfg.duration/40, 100*time.Millisecond))

	sum, err := run(cfg)
	if err != nil {
		fmt.Fprintln(stderr, "soak:", err)
		return 1
	}
	sum.markdown(stdout)
	if *asJSON {
		if err := sum.writeJSON(stdout); err != nil {
			fmt.Fprintln(stderr, "soak:", err)
		}
	}
	if sum.Verdict != "PASS" {
		fmt.Fprintf(stderr, "\nsoak: FAIL; the proxy's log (%s) ends with:\n%s\n", sum.LogPath, sum.LogTail)
		return 1
	}
	return 0
}

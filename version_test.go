package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

func TestReadBuildInfo(t *testing.T) {
	checkout := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v0.0.0-20261130015500-7600e2c1a2b3+dirty"},
		Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "7600e2c1a2b3"}, {Key: "vcs.time", Value: "2026-11-30T01:55:00Z"}, {Key: "vcs.modified", Value: "true"}}}
	tests := []struct {
		name string
		s    stamp
		bi   *debug.BuildInfo
		want buildInfo
	}{
		{"release build", stamp{"v1.2.3", "abc", "2026-11-30T00:00:00Z"}, checkout,
			buildInfo{Version: "v1.2.3", Revision: "abc", RevisionTime: "2026-11-30T01:55:00Z", Modified: true, BuildDate: "2026-11-30T00:00:00Z", GoVersion: "go1.26.8", Platform: "linux/arm64"}},
		{"go install module@v1.2.3", stamp{}, &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.2.3"}},
			buildInfo{Version: "v1.2.3", GoVersion: "go1.26.8", Platform: "linux/arm64"}},
		{"checkout", stamp{}, checkout,
			buildInfo{Version: checkout.Main.Version, Revision: "7600e2c1a2b3", RevisionTime: "2026-11-30T01:55:00Z", Modified: true, GoVersion: "go1.26.8", Platform: "linux/arm64"}},
		{"nothing recorded", stamp{}, &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}},
			buildInfo{Version: "(devel)", GoVersion: "go1.26.8", Platform: "linux/arm64"}},
		{"no build info", stamp{}, nil, buildInfo{Version: "(devel)", GoVersion: runtime.Version(), Platform: "linux/arm64"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := readBuildInfo(tt.s, tt.bi, "linux/arm64"); got != tt.want {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
	var out bytes.Buffer
	readBuildInfo(stamp{"v1.2.3", "", "2026-11-30T00:00:00Z"}, checkout, "linux/amd64").write(&out)
	want := "tcpproxy version v1.2.3\nrevision:    7600e2c1a2b3 (modified)\ncommit time: 2026-11-30T01:55:00Z\nbuild date:  2026-11-30T00:00:00Z\ngo version:  go1.26.8\nplatform:    linux/amd64\n"
	if out.String() != want {
		t.Errorf("-version output:\n%s\nwant:\n%s", out.String(), want)
	}
}

// TestBinaryVersion: a binary built from a git checkout reports its
// commit, and one stamped with -ldflags -X as scripts/release.sh does
// reports the stamp, both in -version and in tcpproxy_build_info on
// /metrics.
func TestBinaryVersion(t *testing.T) {
	t.Run("checkout", testCheckoutVersion)
	stamped := filepath.Join(t.TempDir(), "tcpproxy")
	ldflags := "-X main.version=v9.8.7-test -X main.revision=feedface -X main.buildDate=2026-11-30T00:00:00Z"
	if b, err := exec.Command("go", "build", "-trimpath", "-ldflags", ldflags, "-o", stamped, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	out, err := exec.Command(stamped, "-version").Output()
	if err != nil || !strings.HasPrefix(string(out), "tcpproxy version v9.8.7-test\nrevision:    feedface") || !strings.Contains(string(out), "build date:  2026-11-30T00:00:00Z") {
		t.Fatalf("stamped -version: %v\n%s", err, out)
	}

	port, admin := freePort(t), freePort(t)
	path := writeConfig(t, fmt.Sprintf("admin: 127.0.0.1:%d\napps:\n", admin)+appYAML("v", []int{port}, []string{deadAddr(t)}, ""))
	startCmd(t, exec.Command(stamped, "-c", path))
	waitListening(t, admin)
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", admin))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	want := fmt.Sprintf(`tcpproxy_build_info{goversion=%q,revision="feedface",version="v9.8.7-test"} 1`, runtime.Version())
	if !strings.Contains(string(body), want) {
		t.Errorf("/metrics lacks %s", want)
	}
}

// testCheckoutVersion builds with VCS stamping on (this machine's go env
// turns it off) and checks that the commit is reported. Go finds the
// repository only where .git is a directory, not in a git worktree.
func testCheckoutVersion(t *testing.T) {
	head, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		t.Skipf("not a git checkout (%v): nothing for the toolchain to record", err)
	}
	if fi, err := os.Stat(".git"); err != nil || !fi.IsDir() {
		t.Skip("a git worktree (.git is a file): the Go toolchain records no VCS info there")
	}
	bin := filepath.Join(t.TempDir(), "tcpproxy")
	if b, err := exec.Command("go", "build", "-buildvcs=true", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	out, err := exec.Command(bin, "-version").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"revision:    " + strings.TrimSpace(string(head)), "go version:  " + runtime.Version(), "platform:    " + runtime.GOOS + "/" + runtime.GOARCH} {
		if !strings.Contains(string(out), want) {
			t.Errorf("-version of a checkout build lacks %q:\n%s", want, out)
		}
	}
}

package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/michaeldbianchi/tcpproxy/internal/metrics"
)

// Stamped at link time by scripts/release.sh, e.g.
//
//	-ldflags "-X main.version=v1.2.3 -X main.revision=<git sha> -X main.buildDate=2026-11-30T12:00:00Z"
//
// Empty (the default) means not stamped: -version then falls back to what
// the Go toolchain recorded in the binary (see readBuildInfo).
var (
	version   = ""
	revision  = ""
	buildDate = ""
)

// develVersion is reported when neither the linker nor the Go toolchain
// recorded a version (a `go build` outside any VCS checkout).
const develVersion = "(devel)"

// buildInfo is what `tcpproxy -version` prints and what
// tcpproxy_build_info exposes.
type buildInfo struct {
	Version      string // v1.2.3, a module pseudo-version, or "(devel)"
	Revision     string // VCS commit; "" when unknown
	RevisionTime string // commit time, RFC 3339; "" when unknown
	Modified     bool   // built from a checkout with uncommitted changes
	BuildDate    string // RFC 3339, only when stamped; "" when unknown
	GoVersion    string // the toolchain that built the binary, e.g. go1.26.8
	Platform     string // GOOS/GOARCH
}

// stamp is the part of buildInfo the linker may set.
type stamp struct {
	version, revision, buildDate string
}

// currentBuild describes this binary: the linker's stamp first, then the
// Go toolchain's build info (the module version of `go install
// module@v1.2.3`, vcs.revision, vcs.time and vcs.modified of a checkout).
func currentBuild() buildInfo {
	bi, _ := debug.ReadBuildInfo() // nil when the binary carries none
	return readBuildInfo(stamp{version, revision, buildDate}, bi, runtime.GOOS+"/"+runtime.GOARCH)
}

// readBuildInfo merges the linker stamp s and the toolchain's bi (nil when
// the binary carries none) into a buildInfo for platform.
func readBuildInfo(s stamp, bi *debug.BuildInfo, platform string) buildInfo {
	b := buildInfo{Version: s.version, Revision: s.revision, BuildDate: s.buildDate, GoVersion: runtime.Version(), Platform: platform}
	if bi != nil {
		b.GoVersion = bi.GoVersion
		if b.Version == "" && bi.Main.Version != "" && bi.Main.Version != develVersion {
			b.Version = bi.Main.Version
		}
		for _, kv := range bi.Settings {
			switch kv.Key {
			case "vcs.revision":
				if b.Revision == "" {
					b.Revision = kv.Value
				}
			case "vcs.time":
				b.RevisionTime = kv.Value
			case "vcs.modified":
				b.Modified = kv.Value == "true"
			}
		}
	}
	if b.Version == "" {
		b.Version = develVersion
	}
	return b
}

// write prints b the way `nginx -V` and `haproxy -vv` do: the version on
// the first line, then one detail per line, the unknown ones left out.
func (b buildInfo) write(w io.Writer) {
	fmt.Fprintf(w, "tcpproxy version %s\n", b.Version)
	if b.Revision != "" {
		mod := ""
		if b.Modified {
			mod = " (modified)"
		}
		fmt.Fprintf(w, "revision:    %s%s\n", b.Revision, mod)
	}
	if b.RevisionTime != "" {
		fmt.Fprintf(w, "commit time: %s\n", b.RevisionTime)
	}
	if b.BuildDate != "" {
		fmt.Fprintf(w, "build date:  %s\n", b.BuildDate)
	}
	fmt.Fprintf(w, "go version:  %s\n", b.GoVersion)
	fmt.Fprintf(w, "platform:    %s\n", b.Platform)
}

// metrics returns the labels of tcpproxy_build_info.
func (b buildInfo) metrics() metrics.Build {
	return metrics.Build{Version: b.Version, Revision: b.Revision, GoVersion: b.GoVersion}
}

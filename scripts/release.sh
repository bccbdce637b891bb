#!/usr/bin/env bash
# Builds the release binaries: static (CGO_ENABLED=0), reproducible
# (-trimpath, build date = the commit's time), for linux/amd64 and
# linux/arm64, stamped with the version, commit and build date that
# `tcpproxy -version` and tcpproxy_build_info report, with a SHA256SUMS
# file beside them.
#
#   scripts/release.sh [VERSION]      # default: git describe --tags --always --dirty
#
# Output, in dist/:
#   tcpproxy-linux-amd64, tcpproxy-linux-arm64, SHA256SUMS
#
# The Dockerfile copies dist/tcpproxy-linux-$TARGETARCH into the image.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

version=${1:-$(git describe --tags --always --dirty 2>/dev/null || echo "(devel)")}
revision=$(git rev-parse HEAD 2>/dev/null || true)
# SOURCE_DATE_EPOCH if set (reproducible-builds.org), else the commit's
# time: the same commit always builds the same bytes.
if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
	date=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
elif [ -n "$revision" ]; then
	date=$(TZ=UTC git log -1 --format=%cd --date=format-local:%Y-%m-%dT%H:%M:%SZ)
else
	date=""
fi
ldflags="-s -w -X main.version=$version -X main.revision=$revision -X main.buildDate=$date"

rm -rf dist
mkdir -p dist
for arch in amd64 arm64; do
	out=dist/tcpproxy-linux-$arch
	echo "building $out ($version)"
	# -buildvcs=false: the commit is stamped above, also where the Go
	# toolchain cannot see the repository (a git worktree, a tarball).
	CGO_ENABLED=0 GOOS=linux GOARCH=$arch go build -trimpath -buildvcs=false -ldflags "$ldflags" -o "$out" .
	# A static binary starts on scratch and distroless images; say so
	# now rather than on the first container that cannot start it.
	if ! file "$out" | grep -q 'statically linked'; then
		echo "release.sh: $out is not statically linked: $(file "$out")" >&2
		exit 1
	fi
done
(cd dist && sha256sum tcpproxy-linux-* >SHA256SUMS)
cat dist/SHA256SUMS

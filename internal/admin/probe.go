package admin

import (
	"net/http"
)

// probeHandler answers a liveness or readiness probe: 200 with pass while
// check holds, 503 with fail otherwise.
type probeHandler struct {
	check      func() bool
	pass, fail string
}

func (p probeHandler) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	// A probe's answer is only true now; a cache must not replay it.
	w.Header().Set("Cache-Control", "no-store")
	if !p.check() {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(p.fail))
		return
	}
	_, _ = w.Write([]byte(p.pass))
}

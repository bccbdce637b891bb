package admin

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"

	"github.com/michaeldbianchi/tcpproxy/internal/stats"
)

// statusHandler serves the Snapshot as JSON; the shape is the one of the
// stats types' JSON tags.
type statusHandler struct {
	snapshot func() stats.Snapshot
	log      *slog.Logger
}

func (h statusHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	snap := withEmptySlices(h.snapshot())
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	// Encode before writing anything, so a failure can still be a 500
	// rather than a 200 with half a document.
	if err := enc.Encode(snap); err != nil {
		h.log.Error("encode status", "error", err, "remote", r.RemoteAddr)
		http.Error(w, "cannot encode status", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(buf.Bytes())
}

// withEmptySlices returns s with nil slices made empty, so that clients
// iterate over [] rather than having to handle null (an app with no
// targets yet, a proxy with no apps).
func withEmptySlices(s stats.Snapshot) stats.Snapshot {
	apps := make([]stats.App, len(s.Apps))
	for i, a := range s.Apps {
		if a.Ports == nil {
			a.Ports = []int{}
		}
		if a.Targets == nil {
			a.Targets = []stats.Target{}
		}
		if a.SNI == nil {
			a.SNI = []string{}
		}
		if a.HTTPHost == nil {
			a.HTTPHost = []string{}
		}
		if a.TLS != nil {
			t := *a.TLS
			t.ALPN = append([]string{}, t.ALPN...)
			t.Certificates = append([]stats.Certificate{}, t.Certificates...)
			a.TLS = &t
		}
		apps[i] = a
	}
	s.Apps = apps
	if s.Listeners == nil {
		s.Listeners = []stats.Listener{}
	}
	return s
}

package admin

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
)

// ErrNotFound is what an Options.SetDrain returns, wrapped, for an app or
// target that the running config does not have.
var ErrNotFound = errors.New("not found")

// drainHandler serves POST /apps/{app}/targets/{address}/drain (drain:
// true) and .../ready (drain: false).
type drainHandler struct {
	set   func(app, address string, drain bool) error
	drain bool
	log   *slog.Logger
}

// drainResult is the answer to a drain or ready request.
type drainResult struct {
	App     string `json:"app"`
	Address string `json:"address"`
	Drain   bool   `json:"drain"`
}

func (h drainHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	res := drainResult{App: r.PathValue("app"), Address: r.PathValue("address"), Drain: h.drain}
	if err := h.set(res.App, res.Address, h.drain); err != nil {
		status := http.StatusInternalServerError
		if errors.Is(err, ErrNotFound) {
			status = http.StatusNotFound
		}
		http.Error(w, err.Error(), status)
		return
	}
	msg := "target drained through the admin API: no new connections"
	if !h.drain {
		msg = "target ready through the admin API: takes new connections"
	}
	h.log.Info(msg, "app", res.App, "target", res.Address, "remote", r.RemoteAddr)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(res)
}

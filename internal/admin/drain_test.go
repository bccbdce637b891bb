package admin

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
)

// post sends a POST with an optional bearer token.
func post(t *testing.T, url, token string) response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: string(b)}
}

// drainRecorder is a SetDrain that knows one app and target.
type drainRecorder struct {
	mu    sync.Mutex
	calls []string
}

func (d *drainRecorder) set(app, address string, drain bool) error {
	if app != "web" {
		return fmt.Errorf("no app %q: %w", app, ErrNotFound)
	}
	if address != "127.0.0.1:9001" && address != "[::1]:9001" {
		return fmt.Errorf("app %q has no target %q: %w", app, address, ErrNotFound)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls = append(d.calls, fmt.Sprintf("%s %s %v", app, address, drain))
	return nil
}

func TestDrainEndpoints(t *testing.T) {
	rec := &drainRecorder{}
	_, base := serve(t, Options{Snapshot: sampleSnapshot, Token: func() string { return "s3cret" }, SetDrain: rec.set})
	tests := []struct {
		name, path, token string
		wantStatus        int
		wantBody          string
	}{
		{"no token", "/apps/web/targets/127.0.0.1:9001/drain", "", 401, "unauthorized"},
		{"wrong token", "/apps/web/targets/127.0.0.1:9001/drain", "guess", 401, "unauthorized"},
		{"drain", "/apps/web/targets/127.0.0.1:9001/drain", "s3cret", 200, `{"app":"web","address":"127.0.0.1:9001","drain":true}`},
		{"ready", "/apps/web/targets/127.0.0.1:9001/ready", "s3cret", 200, `{"app":"web","address":"127.0.0.1:9001","drain":false}`},
		{"IPv6, escaped", "/apps/web/targets/%5B::1%5D:9001/drain", "s3cret", 200, `"address":"[::1]:9001"`},
		{"unknown app", "/apps/api/targets/127.0.0.1:9001/drain", "s3cret", 404, `no app "api"`},
		{"unknown target", "/apps/web/targets/127.0.0.1:1/drain", "s3cret", 404, `has no target "127.0.0.1:1"`},
		{"unknown action", "/apps/web/targets/127.0.0.1:9001/pause", "s3cret", 404, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := post(t, base+tt.path, tt.token)
			if r.status != tt.wantStatus || !strings.Contains(r.body, tt.wantBody) {
				t.Errorf("POST %s = %d %q, want %d %q", tt.path, r.status, r.body, tt.wantStatus, tt.wantBody)
			}
			if r.status == 401 && r.header.Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
		})
	}
	want := []string{"web 127.0.0.1:9001 true", "web 127.0.0.1:9001 false", "web [::1]:9001 true"}
	if strings.Join(rec.calls, "|") != strings.Join(want, "|") {
		t.Errorf("SetDrain calls %q, want %q", rec.calls, want)
	}
	// Reading needs no token.
	if r := get(t, base+"/status"); r.status != 200 || !json.Valid([]byte(r.body)) {
		t.Errorf("GET /status = %d", r.status)
	}
}

// TestNoTokenRefusesChanges: without a token every request other than
// GET and HEAD answers 403, even with an Authorization header.
func TestNoTokenRefusesChanges(t *testing.T) {
	rec := &drainRecorder{}
	for _, o := range []Options{
		{Snapshot: sampleSnapshot, SetDrain: rec.set},
		{Snapshot: sampleSnapshot, SetDrain: rec.set, Token: func() string { return "" }},
	} {
		_, base := serve(t, o)
		for _, tok := range []string{"", "anything"} {
			if r := post(t, base+"/apps/web/targets/127.0.0.1:9001/drain", tok); r.status != http.StatusForbidden || !strings.Contains(r.body, "admin_token") {
				t.Errorf("POST with token %q = %d %q, want 403", tok, r.status, r.body)
			}
		}
		if r := get(t, base+"/healthz"); r.status != 200 {
			t.Errorf("GET /healthz = %d", r.status)
		}
	}
	if len(rec.calls) != 0 {
		t.Errorf("SetDrain called without a token: %q", rec.calls)
	}
}

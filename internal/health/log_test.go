package health

import (
	"context"
	"log/slog"
	"sync"
	"testing"
)

// logLine is one captured log record, flattened for assertions.
type logLine struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

// logStore collects the records of a recorder and its derived handlers.
type logStore struct {
	mu    sync.Mutex
	lines []logLine
}

// recorder is a slog.Handler that keeps every record in memory.
type recorder struct {
	store *logStore
	attrs []slog.Attr
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }

func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	line := logLine{level: rec.Level, msg: rec.Message, attrs: map[string]string{}}
	for _, a := range r.attrs {
		line.attrs[a.Key] = a.Value.String()
	}
	rec.Attrs(func(a slog.Attr) bool {
		line.attrs[a.Key] = a.Value.String()
		return true
	})
	r.store.mu.Lock()
	r.store.lines = append(r.store.lines, line)
	r.store.mu.Unlock()
	return nil
}

func (r *recorder) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &recorder{store: r.store, attrs: append(append([]slog.Attr(nil), r.attrs...), attrs...)}
}

func (r *recorder) WithGroup(string) slog.Handler { return r } // unused by the package

// newRecorder returns a logger whose output the returned store captures.
func newRecorder() (*slog.Logger, *logStore) {
	s := &logStore{}
	return slog.New(&recorder{store: s}), s
}

// snapshot returns a copy of the captured lines.
func (s *logStore) snapshot() []logLine {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]logLine(nil), s.lines...)
}

// wantLines asserts the exact sequence of messages logged so far.
func (s *logStore) wantLines(t *testing.T, msgs ...string) {
	t.Helper()
	got := s.snapshot()
	if len(got) != len(msgs) {
		t.Fatalf("logged %d lines %v, want %v", len(got), got, msgs)
	}
	for i, l := range got {
		if l.msg != msgs[i] {
			t.Fatalf("line %d: msg %q, want %q (all: %v)", i, l.msg, msgs[i], got)
		}
	}
}

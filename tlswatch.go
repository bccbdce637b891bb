package main

import (
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
)

// certWatcher is -watch for the certificate, key and CA files the config
// names: a change reloads the config as SIGHUP does, which reads them
// again. It watches directories, not files, to follow the ways files
// are renewed: written in place, a new file renamed over the old one,
// certbot's live/ symlinks swapped to a new archive/ file, Kubernetes'
// "..data" symlink swapped in a Secret volume. For a file that is a
// symlink it also watches the directory of the file it points to, so
// that a write through the link is seen.
type certWatcher struct {
	w       *fsnotify.Watcher
	log     *slog.Logger
	changes chan struct{}
	done    chan struct{}

	mu    sync.Mutex
	files map[string]bool // absolute paths, links resolved too
	dirs  map[string]bool // watched directories
}

// watchCerts starts watching the files cfg names. It returns nil (a
// watcher that never fires) when watching cannot start, and logs why.
func watchCerts(cfg *config, log *slog.Logger) *certWatcher {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		log.Error("cannot watch the certificate files", "err", err)
		return nil
	}
	cw := &certWatcher{w: w, log: log, changes: make(chan struct{}, 1), done: make(chan struct{}), dirs: map[string]bool{}}
	cw.set(cfg)
	go cw.loop()
	return cw
}

// Changes fires, debounced, when a watched file changed.
func (cw *certWatcher) Changes() <-chan struct{} {
	if cw == nil {
		return nil
	}
	return cw.changes
}

// set watches the files cfg names from now on (after a reload).
func (cw *certWatcher) set(cfg *config) {
	if cw == nil {
		return
	}
	files := map[string]bool{}
	for _, p := range tlsFilePaths(cfg) {
		abs, err := filepath.Abs(p)
		if err != nil {
			continue
		}
		files[abs] = true
		if real, err := filepath.EvalSymlinks(abs); err == nil {
			files[real] = true
		}
	}
	cw.mu.Lock()
	defer cw.mu.Unlock()
	cw.files = files
	needed := map[string]bool{}
	for f := range files {
		needed[filepath.Dir(f)] = true
	}
	for dir := range cw.dirs {
		if !needed[dir] {
			cw.w.Remove(dir)
			delete(cw.dirs, dir)
		}
	}
	for dir := range needed {
		if cw.dirs[dir] {
			continue
		}
		if err := cw.w.Add(dir); err != nil {
			cw.log.Warn("cannot watch a certificate directory", "dir", dir, "err", err)
			continue
		}
		cw.dirs[dir] = true
	}
}

// tlsFilePaths lists every certificate, key and CA file cfg reads.
func tlsFilePaths(cfg *config) []string {
	var out []string
	for _, a := range cfg.Apps {
		if t := a.TLS; t != nil {
			for _, c := range t.Certificates {
				out = append(out, c.Cert, c.Key)
			}
			out = append(out, t.ClientCA)
		}
		if t := a.TargetTLS; t != nil {
			out = append(out, t.CA)
			if t.Client != nil {
				out = append(out, t.Client.Cert, t.Client.Key)
			}
		}
	}
	kept := out[:0]
	for _, p := range out {
		if p != "" {
			kept = append(kept, p)
		}
	}
	return kept
}

// relevant reports whether an event on name concerns a watched file.
func (cw *certWatcher) relevant(name string) bool {
	name = filepath.Clean(name)
	cw.mu.Lock()
	defer cw.mu.Unlock()
	return cw.files[name] || filepath.Base(name) == "..data" && cw.dirs[filepath.Dir(name)]
}

func (cw *certWatcher) loop() {
	defer close(cw.done)
	var timer <-chan time.Time
	for {
		select {
		case ev, ok := <-cw.w.Events:
			if !ok {
				return
			}
			if ev.Op&(fsnotify.Write|fsnotify.Create|fsnotify.Rename|fsnotify.Remove) != 0 && cw.relevant(ev.Name) {
				timer = time.After(watchSettle)
			}
		case err, ok := <-cw.w.Errors:
			if !ok {
				return
			}
			cw.log.Warn("certificate watch", "err", err)
		case <-timer:
			timer = nil
			cw.log.Info("certificate files changed: reloading")
			select {
			case cw.changes <- struct{}{}:
			default: // a reload is already pending
			}
		}
	}
}

// Close stops watching.
func (cw *certWatcher) Close() error {
	if cw == nil {
		return nil
	}
	err := cw.w.Close()
	<-cw.done
	return err
}

package main

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Settle periods of -watch. An editor's save (truncate, write, rename)
// and a ConfigMap swap finish within watchSettle; a writer that pauses
// longer mid-write is caught by watchRemoveSettle when the part written
// so far would remove apps.
const (
	watchSettle       = 300 * time.Millisecond
	watchRemoveSettle = 2 * time.Second
)

// fileWatcher reports changes to one file, including editors that write
// a new file and rename it over the old one, once the file has stopped
// changing: its size and modification time are the same over watchSettle.
type fileWatcher struct {
	w         *fsnotify.Watcher
	path      string
	changes   chan struct{}
	done      chan struct{}
	changedAt atomic.Int64 // unix nanos when the file was last seen changed
}

// fileStamp tells one version of the watched file from another.
type fileStamp struct {
	size int64
	mod  time.Time
	ok   bool
}

func stampOf(path string) fileStamp {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}
	}
	return fileStamp{size: fi.Size(), mod: fi.ModTime(), ok: true}
}

// watchFile watches path. It watches the directory, not the file: a
// rename-over replaces the inode a file watch would be attached to.
func watchFile(path string, log *slog.Logger) (*fileWatcher, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", path, err)
	}
	if err := w.Add(filepath.Dir(abs)); err != nil {
		w.Close()
		return nil, fmt.Errorf("watch %s: %w", filepath.Dir(abs), err)
	}
	fw := &fileWatcher{w: w, path: abs, changes: make(chan struct{}, 1), done: make(chan struct{})}
	fw.changedAt.Store(time.Now().UnixNano())
	go fw.loop(log)
	return fw, nil
}

func (fw *fileWatcher) loop(log *slog.Logger) {
	defer close(fw.done)
	var timer <-chan time.Time
	last := stampOf(fw.path)
	for {
		select {
		case ev, ok := <-fw.w.Events:
			if !ok {
				return
			}
			if fw.relevant(ev) {
				fw.changedAt.Store(time.Now().UnixNano())
				timer = time.After(watchSettle)
			}
		case err, ok := <-fw.w.Errors:
			if !ok {
				return
			}
			log.Warn("config watch", "err", err)
		case <-timer:
			timer = nil
			if now := stampOf(fw.path); now != last {
				// Still changing (or changed since the event): look again.
				last = now
				fw.changedAt.Store(time.Now().UnixNano())
				timer = time.After(watchSettle)
				continue
			}
			fw.notify()
		}
	}
}

// relevant reports whether ev may have changed the config file. A
// Kubernetes ConfigMap volume swaps its "..data" symlink instead of
// touching the file the config path names.
func (fw *fileWatcher) relevant(ev fsnotify.Event) bool {
	name := filepath.Clean(ev.Name)
	return (name == fw.path || filepath.Base(name) == "..data") && ev.Op&(fsnotify.Write|fsnotify.Create|fsnotify.Rename) != 0
}

// notify reports a change, unless one is already pending.
func (fw *fileWatcher) notify() {
	select {
	case fw.changes <- struct{}{}:
	default:
	}
}

// stableFor returns how long the file has not changed.
func (fw *fileWatcher) stableFor() time.Duration {
	return time.Since(time.Unix(0, fw.changedAt.Load()))
}

// recheckAfter reports a change after d, so that a change held back for
// settling is looked at again.
func (fw *fileWatcher) recheckAfter(d time.Duration) { time.AfterFunc(d, fw.notify) }

// Close stops watching.
func (fw *fileWatcher) Close() error {
	err := fw.w.Close()
	<-fw.done
	return err
}

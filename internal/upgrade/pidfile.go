package upgrade

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
)

// WritePIDFile writes this process's id to path, replacing the file
// atomically, so a supervisor never reads a half-written or empty file
// while an upgraded child takes over. Call it in the child before Ready:
// the parent may exit as soon as it is told, and a supervisor that
// follows the PID file must find the child there by then.
func WritePIDFile(path string) error {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	// The temporary file lives next to path: rename is atomic only
	// within one file system.
	f, err := os.CreateTemp(dir, "."+base+".tmp*")
	if err != nil {
		return fmt.Errorf("upgrade: write pid file %s: %w", path, err)
	}
	tmp := f.Name()
	_, err = f.WriteString(strconv.Itoa(os.Getpid()) + "\n")
	if err == nil {
		err = f.Chmod(0o644) // CreateTemp makes it 0600; supervisors may run as another user
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("upgrade: write pid file %s: %w", path, err)
	}
	return nil
}

// ReadPIDFile returns the process id written in the PID file at path.
func ReadPIDFile(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("upgrade: read pid file: %w", err)
	}
	pid, err := strconv.Atoi(string(bytes.TrimSpace(data)))
	if err != nil {
		return 0, fmt.Errorf("upgrade: read pid file %s: %w", path, err)
	}
	return pid, nil
}

// RemovePIDFile removes path if it still holds this process's id. After
// an upgrade the file names the child, and the old process, exiting after
// its drain, must leave it alone. A missing file is not an error.
func RemovePIDFile(path string) error {
	pid, err := ReadPIDFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil && !errors.Is(err, strconv.ErrSyntax) {
		return fmt.Errorf("upgrade: remove pid file %s: %w", path, err)
	}
	if pid != os.Getpid() {
		return nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("upgrade: remove pid file %s: %w", path, err)
	}
	return nil
}

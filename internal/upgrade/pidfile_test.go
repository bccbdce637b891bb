package upgrade

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

func TestPIDFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tcpproxy.pid")
	if err := os.WriteFile(path, []byte("stale\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WritePIDFile(path); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := strconv.Itoa(os.Getpid()) + "\n"; string(data) != want {
		t.Errorf("pid file holds %q, want %q", data, want)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("pid file mode %v, %v; want 0644", fi.Mode(), err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("%d files in the directory, want only the pid file", len(entries))
	}

	if err := RemovePIDFile(path); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("pid file still there after RemovePIDFile: %v", err)
	}
	if err := RemovePIDFile(path); err != nil {
		t.Errorf("RemovePIDFile of a missing file: %v", err)
	}
}

// TestRemovePIDFileOfSuccessor: the old process must not remove the file
// its upgraded child wrote.
func TestRemovePIDFileOfSuccessor(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tcpproxy.pid")
	other := strconv.Itoa(os.Getpid()+1) + "\n"
	if err := os.WriteFile(path, []byte(other), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := RemovePIDFile(path); err != nil {
		t.Fatal(err)
	}
	if data, err := os.ReadFile(path); err != nil || string(data) != other {
		t.Errorf("successor's pid file now %q, %v", data, err)
	}
}

func TestWritePIDFileRelative(t *testing.T) {
	t.Chdir(t.TempDir())
	if err := WritePIDFile("rel.pid"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("rel.pid"); err != nil {
		t.Fatal(err)
	}
}

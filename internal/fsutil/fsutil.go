// Package fsutil holds the one file-writing rule every package that writes
// into the lab directory follows: replace atomically, with the final mode set
// before any byte is written, so a crash never leaves half a file and a
// secret is never readable by others, not even for a moment.
package fsutil

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// WriteFile replaces path with data, atomically, with mode. Missing parent
// directories are created with dirMode.
func WriteFile(path string, data []byte, mode, dirMode os.FileMode) error {
	return replace(path, mode, dirMode, func(f *os.File) error {
		_, err := f.Write(data)
		return err
	})
}

// CopyFile replaces dst with a copy of src, atomically, with mode. The copy
// goes through copy_file_range, so filesystems that share extents do not
// copy the data. Missing parent directories are created with dirMode.
func CopyFile(src, dst string, mode, dirMode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	defer in.Close()
	return replace(dst, mode, dirMode, func(f *os.File) error {
		_, err := io.Copy(f, in)
		return err
	})
}

// replace writes path through a temporary file in its directory whose mode
// is set before fill writes a byte, then renames it into place.
func replace(path string, mode, dirMode os.FileMode, fill func(*os.File) error) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op after the rename
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := fill(f); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

package image

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// safeRemoveAll removes a build directory unless something is still mounted
// below it: a killed mmdebstrap can leave /dev, /proc or /sys mounted in the
// root tree, and removing through those would delete the host's files.
func safeRemoveAll(dir string) error {
	dir = filepath.Clean(dir)
	mounts, err := mountsBelow(dir)
	if err != nil {
		return err
	}
	if len(mounts) > 0 {
		return fmt.Errorf("not removing %s: still mounted below it: %s (umount them first)", dir, strings.Join(mounts, ", "))
	}
	return os.RemoveAll(dir)
}

func mountsBelow(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("check mounts below %s: %w", dir, err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		// Field 5 is the mount point, with spaces and the like octal-escaped.
		mp := unescapeMount(fields[4])
		if strings.HasPrefix(mp, dir+"/") || mp == dir {
			out = append(out, mp)
		}
	}
	return out, sc.Err()
}

func unescapeMount(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var c byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &c); err == nil {
				b.WriteByte(c)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// removeStaleBuilds removes build directories left by builds that were
// killed, once they are old enough not to belong to a running build.
func removeStaleBuilds(imagesDir string, olderThan time.Duration) {
	entries, _ := filepath.Glob(filepath.Join(imagesDir, ".build-*"))
	for _, e := range entries {
		if st, err := os.Stat(e); err == nil && time.Since(st.ModTime()) > olderThan {
			_ = safeRemoveAll(e)
		}
	}
}

package lab

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// consoleSize is how far a console log has grown, so a later wait only
// looks at what a boot printed after this point.
func consoleSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

// waitConsole waits until the console log at path shows marker after
// offset. It polls (the log is a plain file QEMU appends to).
func waitConsole(ctx context.Context, path string, offset int64, marker string) error {
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		if found, err := consoleHas(path, offset, marker); err != nil {
			return err
		} else if found {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no %q on the console after %s: %w", marker, path, ctx.Err())
		case <-tick.C:
		}
	}
}

func consoleHas(path string, offset int64, marker string) (bool, error) {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read console: %w", err)
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return false, fmt.Errorf("read console: %w", err)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return false, fmt.Errorf("read console: %w", err)
	}
	return bytes.Contains(data, []byte(marker)), nil
}

// ConsoleTail returns the last lines of a node's console log, cleaned of
// the terminal control sequences a serial console carries.
func ConsoleTail(path string, lines int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no console log at %s: %v)", path, err)
	}
	text := strings.ReplaceAll(string(data), "\r", "")
	text = stripANSI(text)
	all := strings.Split(strings.TrimRight(text, "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

// stripANSI removes CSI escape sequences (colours, cursor moves).
func stripANSI(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == 0x1b && i+1 < len(s) && s[i+1] == '[' {
			j := i + 2
			for j < len(s) && !(s[j] >= 0x40 && s[j] <= 0x7e) {
				j++
			}
			i = j
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

package progress

import (
	"io"
	"os"

	"golang.org/x/term"
)

// Terminal reports whether w is a terminal and, if so, its size in
// columns and rows (0 when it cannot be read).
func Terminal(w io.Writer) (width, height int, ok bool) {
	f, isFile := w.(*os.File)
	if !isFile || !term.IsTerminal(int(f.Fd())) {
		return 0, 0, false
	}
	width, height, err := term.GetSize(int(f.Fd()))
	if err != nil {
		return 0, 0, true
	}
	return width, height, true
}

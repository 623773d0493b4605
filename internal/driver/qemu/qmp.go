package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"time"
)

// qmpConn is a minimal QEMU Machine Protocol client: JSON objects over a
// unix socket. The server greets with {"QMP": ...}; the client must send
// qmp_capabilities before any other command; replies are {"return": ...}
// or {"error": {...}}, and asynchronous {"event": ...} objects may arrive
// in between and are skipped. Written against the protocol because the
// driver needs four commands and no extra dependencies.
type qmpConn struct {
	conn net.Conn
	dec  *json.Decoder
}

type qmpMessage struct {
	QMP    json.RawMessage `json:"QMP"`
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event string `json:"event"`
}

// dialQMP connects to the socket and negotiates capabilities. The deadline
// of ctx (or 10 s) bounds every later command too.
func dialQMP(ctx context.Context, socket string) (*qmpConn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("qmp: connect %s: %w", socket, err)
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(10 * time.Second)
	}
	_ = conn.SetDeadline(deadline)
	q := &qmpConn{conn: conn, dec: json.NewDecoder(bufio.NewReader(conn))}
	var greeting qmpMessage
	if err := q.dec.Decode(&greeting); err != nil {
		conn.Close()
		return nil, fmt.Errorf("qmp: read greeting from %s: %w", socket, err)
	}
	if greeting.QMP == nil {
		conn.Close()
		return nil, fmt.Errorf("qmp: %s did not greet with a QMP banner", socket)
	}
	if _, err := q.execute("qmp_capabilities", nil); err != nil {
		conn.Close()
		return nil, err
	}
	return q, nil
}

func (q *qmpConn) Close() error { return q.conn.Close() }

// execute runs one command and returns its "return" value.
func (q *qmpConn) execute(command string, args any) (json.RawMessage, error) {
	req := map[string]any{"execute": command}
	if args != nil {
		req["arguments"] = args
	}
	if err := json.NewEncoder(q.conn).Encode(req); err != nil {
		return nil, fmt.Errorf("qmp %s: send: %w", command, err)
	}
	for {
		var msg qmpMessage
		if err := q.dec.Decode(&msg); err != nil {
			return nil, fmt.Errorf("qmp %s: read reply: %w", command, err)
		}
		switch {
		case msg.Event != "":
			continue
		case msg.Error != nil:
			return nil, fmt.Errorf("qmp %s: %s: %s", command, msg.Error.Class, msg.Error.Desc)
		case msg.Return != nil:
			return msg.Return, nil
		}
	}
}

// status returns the run state of query-status ("running", "paused",
// "shutdown", "prelaunch", ...).
func (q *qmpConn) status() (string, error) {
	raw, err := q.execute("query-status", nil)
	if err != nil {
		return "", err
	}
	var st struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return "", fmt.Errorf("qmp query-status: %w", err)
	}
	return st.Status, nil
}

// qmpRun dials, runs one command and hangs up.
func qmpRun(ctx context.Context, socket, command string) (json.RawMessage, error) {
	q, err := dialQMP(ctx, socket)
	if err != nil {
		return nil, err
	}
	defer q.Close()
	return q.execute(command, nil)
}

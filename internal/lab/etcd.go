package lab

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"
)

// etcdClient is an HTTP client that speaks to etcd as the API server's
// etcd client does: mTLS with a certificate of the etcd CA.
func etcdClient(caPEM, certPEM, keyPEM []byte, timeout time.Duration) (*http.Client, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("etcd CA certificate is unreadable")
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("etcd client certificate: %w", err)
	}
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			Proxy:           nil, // never send lab traffic through a proxy
			TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12},
		},
	}, nil
}

// requestJSON sends a request and decodes the JSON answer into v, reading
// at most limit bytes. A non-JSON answer is an error naming the status.
func requestJSON(ctx context.Context, client *http.Client, method, url string, body []byte, limit int64, v any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit))
	if err != nil {
		return resp, fmt.Errorf("%s: %w", url, err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		if len(data) > 512 {
			data = data[:512]
		}
		return resp, fmt.Errorf("%s answered %s: %q", url, resp.Status, data)
	}
	return resp, nil
}

// etcdHealthy asks one etcd member for /health over mTLS, as the API
// server's etcd client would connect.
func etcdHealthy(ctx context.Context, endpoint string, caPEM, certPEM, keyPEM []byte) error {
	client, err := etcdClient(caPEM, certPEM, keyPEM, 5*time.Second)
	if err != nil {
		return err
	}
	defer client.CloseIdleConnections()
	var h struct {
		Health string `json:"health"`
		Reason string `json:"reason"`
	}
	if _, err := requestJSON(ctx, client, http.MethodGet, endpoint+"/health", nil, 4096, &h); err != nil {
		return err
	}
	if h.Health != "true" {
		return fmt.Errorf("etcd reports unhealthy: %s", h.Reason)
	}
	return nil
}

// poll runs check every interval until it succeeds or ctx ends; the error
// then carries the last failure.
func poll(ctx context.Context, interval time.Duration, check func(context.Context) error) error {
	var last error
	for {
		if last = check(ctx); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), last)
		case <-time.After(interval):
		}
	}
}

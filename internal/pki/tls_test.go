package pki

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"testing"
)

// TestTLSHandshakes runs real mutual-TLS handshakes between the pairs that
// talk to each other in a cluster, with the verification the components do:
// the client checks the server's name, the server requires a client
// certificate from its client CA.
func TestTLSHandshakes(t *testing.T) {
	p := mustPlan(t, testLab)
	cl, _ := mustEnsure(t, t.TempDir(), p, 0)
	cases := []struct {
		server, serverCA, host string
		client, clientCA       string
		ok                     bool
	}{
		{APIServer, KubernetesCA, "192.168.100.1", Admin, KubernetesCA, true},
		{APIServer, KubernetesCA, "kubernetes.default.svc", KubeletClient("w1"), KubernetesCA, true},
		{EtcdServer("cp1"), EtcdCA, "127.0.0.1", EtcdAPIServerClient, EtcdCA, true},
		{EtcdServer("cp1"), EtcdCA, "192.168.100.10", EtcdFlannelClient, EtcdCA, true},
		{EtcdPeer("cp1"), EtcdCA, "cp1", EtcdPeer("cp1"), EtcdCA, true},
		{KubeletServing("w2"), KubernetesCA, "192.168.100.12", APIServerKubeletClient, KubernetesCA, true},
		// etcd must refuse Kubernetes identities, and names must match.
		{EtcdServer("cp1"), EtcdCA, "127.0.0.1", Admin, EtcdCA, false},
		{KubeletServing("w2"), KubernetesCA, "192.168.100.11", APIServerKubeletClient, KubernetesCA, false},
		{APIServer, KubernetesCA, "127.0.0.1", FrontProxyClient, KubernetesCA, false},
	}
	for _, tc := range cases {
		t.Run(tc.server+"<-"+tc.client+"@"+tc.host, func(t *testing.T) {
			err := handshake(t, cl, tc.server, tc.serverCA, tc.host, tc.client, tc.clientCA)
			if tc.ok && err != nil {
				t.Errorf("handshake failed: %v", err)
			}
			if !tc.ok && err == nil {
				t.Error("handshake succeeded, want it refused")
			}
		})
	}
}

func keyPair(t *testing.T, cl *Cluster, name string) tls.Certificate {
	t.Helper()
	c, k, err := cl.PEM(name)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(c, k)
	if err != nil {
		t.Fatal(err)
	}
	return pair
}

func pool(t *testing.T, cl *Cluster, ca string) *x509.CertPool {
	t.Helper()
	pem, err := cl.CACert(ca)
	if err != nil {
		t.Fatal(err)
	}
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(pem)
	return p
}

func handshake(t *testing.T, cl *Cluster, server, serverCA, host, client, clientCA string) error {
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{keyPair(t, cl, server)},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool(t, cl, clientCA),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		err = c.(*tls.Conn).Handshake()
		if err == nil {
			_, err = c.Write([]byte("x"))
		}
		done <- err
	}()
	conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{
		Certificates: []tls.Certificate{keyPair(t, cl, client)},
		RootCAs:      pool(t, cl, serverCA),
		ServerName:   host,
	})
	if err != nil {
		<-done
		return err
	}
	defer conn.Close()
	// In TLS 1.3 the server's verdict on the client certificate arrives
	// with the first read.
	_, rerr := io.ReadFull(conn, make([]byte, 1))
	if serr := <-done; serr != nil {
		return serr
	}
	if rerr != nil {
		return rerr
	}
	return nil
}

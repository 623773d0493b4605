package verify

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kubelab/kubelab/internal/versions"
)

func testEnvFor(nodeA, nodeB string) checkEnv {
	return checkEnv{
		ns: "kubelab-check", image: versions.TestImage, domain: "cluster.local",
		nodeA: nodeA, nodeB: nodeB, serverA: "172.16.1.5", serverB: "172.16.2.7",
		webIP: "10.199.3.4", apiIP: "10.199.0.1",
		nodePort: 30080, nodePortTarget: "192.168.100.103", nodePortTargetNodeIs: nodeB, tries: 10,
	}
}

func TestServerPod(t *testing.T) {
	p := serverPod("kubelab-check", "server-a", "w1", versions.TestImage)
	c := p.Spec.Containers[0]
	switch {
	case p.Namespace != "kubelab-check" || p.Name != "server-a":
		t.Errorf("name %s/%s", p.Namespace, p.Name)
	case p.Spec.NodeName != "w1":
		t.Errorf("nodeName %q, want w1", p.Spec.NodeName)
	case c.Image != versions.TestImage:
		t.Errorf("image %q", c.Image)
	case c.ImagePullPolicy != corev1.PullNever:
		t.Errorf("pull policy %q: there is no registry, the image is preloaded", c.ImagePullPolicy)
	case len(c.Ports) != 1 || c.Ports[0].ContainerPort != ServerPort:
		t.Errorf("ports %v", c.Ports)
	case c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Port.IntValue() != ServerPort:
		t.Errorf("readiness probe %+v", c.ReadinessProbe)
	case len(c.Env) != 1 || c.Env[0].ValueFrom.FieldRef.FieldPath != "spec.nodeName":
		t.Errorf("env %+v: the page must name the node", c.Env)
	case !strings.Contains(strings.Join(c.Command, " "), "httpd -f -p 8080"):
		t.Errorf("command %q", c.Command)
	case p.Labels["app"] != serverApp || webService("x").Spec.Selector["app"] != serverApp:
		t.Errorf("the web service does not select the servers: %v", p.Labels)
	}
}

func TestClientChecks(t *testing.T) {
	for _, tc := range []struct{ name, a, b string }{
		{"two workers", "w1", "w2"},
		{"one worker", "w1", "w1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := testEnvFor(tc.a, tc.b)
			checks := clientChecks(e)
			names := map[string]bool{}
			for _, c := range checks {
				p := c.pod
				if names[p.Name] {
					t.Errorf("pod name %s used twice", p.Name)
				}
				names[p.Name] = true
				if p.Spec.NodeName != tc.a && p.Spec.NodeName != tc.b {
					t.Errorf("%s: pinned to %q", c.title, p.Spec.NodeName)
				}
				ct := p.Spec.Containers[0]
				if ct.Image != versions.TestImage || ct.ImagePullPolicy != corev1.PullNever {
					t.Errorf("%s: image %s pull %s", c.title, ct.Image, ct.ImagePullPolicy)
				}
				if p.Spec.RestartPolicy != corev1.RestartPolicyNever {
					t.Errorf("%s: restart policy %s; the check reads the exit", c.title, p.Spec.RestartPolicy)
				}
				if len(c.accept) == 0 {
					t.Errorf("%s accepts nothing", c.title)
				}
			}
			// Cross-node: the pod on A fetches the server on B and expects B.
			ab := checks[0]
			if ab.pod.Spec.NodeName != tc.a || !strings.Contains(ab.pod.Spec.Containers[0].Command[2], "http://172.16.2.7:8080/") || ab.accept[0] != tc.b {
				t.Errorf("pod network A->B: node %s, cmd %q, accept %v", ab.pod.Spec.NodeName, ab.pod.Spec.Containers[0].Command, ab.accept)
			}
			ba := checks[1]
			if ba.pod.Spec.NodeName != tc.b || !strings.Contains(ba.pod.Spec.Containers[0].Command[2], "http://172.16.1.5:8080/") || ba.accept[0] != tc.a {
				t.Errorf("pod network B->A: node %s, cmd %q, accept %v", ba.pod.Spec.NodeName, ba.pod.Spec.Containers[0].Command, ba.accept)
			}
			var all []string
			for _, c := range checks {
				all = append(all, c.pod.Spec.Containers[0].Command[2])
			}
			joined := strings.Join(all, "\n")
			for _, want := range []string{
				"http://10.199.3.4:80/", "http://web/", "nslookup kubernetes.default.svc.cluster.local",
				"nslookup web.kubelab-check.svc.cluster.local", "http://192.168.100.103:30080/",
			} {
				if !strings.Contains(joined, want) {
					t.Errorf("no check runs %q", want)
				}
			}
		})
	}
	e := testEnvFor("w1", "w2")
	e.nodePort = 0
	for _, c := range clientChecks(e) {
		if strings.Contains(c.title, "NodePort") {
			t.Errorf("NodePort check without a NodePort: %s", c.title)
		}
	}
}

func TestOptionsForNodePortInRange(t *testing.T) {
	p := testPlan(t)
	c := p.Clusters[0]
	o := OptionsFor(c)
	if o.NodePort < c.NodePortFrom || o.NodePort > c.NodePortTo {
		t.Fatalf("NodePort %d outside the cluster's range %d-%d", o.NodePort, c.NodePortFrom, c.NodePortTo)
	}
	if o.NodePort != c.NodePortFrom+NodePortOffset {
		t.Errorf("NodePort %d, want %d", o.NodePort, c.NodePortFrom+NodePortOffset)
	}
	if len(o.Nodes) != 1 || o.Nodes[0] != "n1" || o.ClusterDomain != c.ClusterDomain {
		t.Errorf("options %+v", o)
	}
	c.NodePortTo = c.NodePortFrom + 10
	if o := OptionsFor(c); o.NodePort != c.NodePortFrom {
		t.Errorf("small range: NodePort %d, want %d", o.NodePort, c.NodePortFrom)
	}
	s := nodePortService("ns", o.NodePort)
	if s.Spec.Type != corev1.ServiceTypeNodePort || int(s.Spec.Ports[0].NodePort) != o.NodePort ||
		s.Spec.Ports[0].TargetPort.IntValue() != ServerPort || s.Spec.Selector["app"] != serverApp {
		t.Errorf("NodePort service %+v", s.Spec)
	}
}

func TestAnswer(t *testing.T) {
	nslookup := "Server:\t\t10.199.0.10\nAddress:\t10.199.0.10:53\n\nName:\tkubernetes.default.svc.cluster.local\nAddress: 10.199.0.1\n\nkubelab-check: ok after 1 tries\n"
	for _, tc := range []struct {
		name, out string
		accept    []string
		want      string
		ok        bool
	}{
		{"nslookup", nslookup, []string{"Address: 10.199.0.1"}, "Address: 10.199.0.1", true},
		{"nslookup server line is no answer", nslookup, []string{"Address: 10.199.0.10"}, "", false},
		{"wget", "w2\nkubelab-check: ok after 3 tries\n", []string{"w1", "w2"}, "w2", true},
		{"wrong node", "w1\n", []string{"w2"}, "", false},
		{"substring is not enough", "w10\n", []string{"w1"}, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := answer(tc.out, tc.accept)
			if got != tc.want || ok != tc.ok {
				t.Errorf("answer = %q, %v; want %q, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
	if n := triesNote("w2\nkubelab-check: ok after 3 tries\n"); n != " (3 tries)" {
		t.Errorf("tries note %q", n)
	}
	if n := triesNote("w2\nkubelab-check: ok after 1 tries\n"); n != "" {
		t.Errorf("tries note %q for a first-try success", n)
	}
}

// TestRetryScript runs the client script with the shells at hand (the test
// image runs busybox sh).
func TestRetryScript(t *testing.T) {
	shells := [][]string{{"sh"}}
	if _, err := exec.LookPath("busybox"); err == nil {
		shells = append(shells, []string{"busybox", "sh"})
	}
	for _, sh := range shells {
		run := func(cmd string, tries int) (string, error) {
			args := append(append([]string{}, sh[1:]...), "-c", retryScript(cmd, tries))
			out, err := exec.Command(sh[0], args...).CombinedOutput()
			return string(out), err
		}
		out, err := run("echo w2", 3)
		if err != nil || !strings.Contains(out, "w2\n"+okMarker+" 1 tries") {
			t.Errorf("%v: success: %q, %v", sh, out, err)
		}
		start := time.Now()
		out, err = run("echo nope; false", 2)
		if err == nil || !strings.Contains(out, "nope\nkubelab-check: failed 2 tries") || time.Since(start) < 2*time.Second {
			t.Errorf("%v: failure: %q, %v after %s", sh, out, err, time.Since(start))
		}
	}
}

// TestWgetWithBusybox runs the client command with the busybox the test
// image is made of against a local server.
func TestWgetWithBusybox(t *testing.T) {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		if ci() {
			t.Fatalf("busybox is required (hack/install-deps.sh): %v", err)
		}
		t.Skip("busybox not installed")
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "w2") }))
	defer srv.Close()
	out, err := exec.Command(bb, "sh", "-c", retryScript(wgetCmd(srv.URL+"/"), 2)).CombinedOutput()
	if got, ok := answer(string(out), []string{"w2"}); err != nil || !ok || got != "w2" {
		t.Fatalf("busybox wget: %v\n%s", err, out)
	}
}

func TestNodeProblem(t *testing.T) {
	for _, tc := range []struct {
		name string
		node *corev1.Node
		want string
	}{
		{"missing", nil, "not registered"},
		{"no conditions", &corev1.Node{}, "no Ready condition"},
		{"ready", &corev1.Node{Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}}}, ""},
		{"not ready", &corev1.Node{Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{
			{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse, Reason: "fine"},
			{Type: corev1.NodeReady, Status: corev1.ConditionFalse, Reason: "KubeletNotReady", Message: "cni not initialized"},
		}}}, "not ready: Ready=False (KubeletNotReady: cni not initialized)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := nodeProblem(tc.node)
			if (tc.want == "" && got != "") || !strings.Contains(got, tc.want) || strings.Contains(got, "fine") {
				t.Errorf("nodeProblem = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestFailingChecks(t *testing.T) {
	body := "[+]ping ok\n[-]etcd failed: reason withheld\n[+]log ok\n[-]poststarthook/rbac/bootstrap-roles failed: reason withheld\nreadyz check failed\n"
	want := "[-]etcd failed: reason withheld; [-]poststarthook/rbac/bootstrap-roles failed: reason withheld"
	if got := failingChecks(body); got != want {
		t.Errorf("failingChecks = %q, want %q", got, want)
	}
	if got := failingChecks("Unauthorized\n"); got != "Unauthorized" {
		t.Errorf("failingChecks = %q", got)
	}
}

func TestResultString(t *testing.T) {
	r := Result{Name: "pod network w1 -> pod on w2", Status: Fail, Duration: 1234 * time.Millisecond, Detail: "pod x: exited\nstate: y"}
	s := r.String()
	if !strings.HasPrefix(s, "FAIL pod network w1 -> pod on w2") || !strings.Contains(s, "1.2s") || !strings.Contains(s, "\n       state: y") {
		t.Errorf("result line %q", s)
	}
}

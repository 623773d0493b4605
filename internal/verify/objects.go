package verify

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Names of the objects the smoke check makes in its namespace.
const (
	DefaultCheckNamespace = "kubelab-check"
	ServerPort            = 8080 // busybox httpd in the server pods
	ServicePort           = 80
	WebService            = "web"
	NodePortService       = "web-nodeport"
	serverApp             = "kubelab-check-server"
	clientApp             = "kubelab-check-client"
	okMarker              = "kubelab-check: ok after"
)

var managedBy = map[string]string{"app.kubernetes.io/managed-by": "kubelab"}

func labels(app string) map[string]string {
	l := map[string]string{"app": app}
	for k, v := range managedBy {
		l[k] = v
	}
	return l
}

func ptr[T any](v T) *T { return &v }

// podBase is what every check pod shares: pinned to a node by nodeName, so
// the check works even with a broken scheduler and lands exactly where it
// must; the test image is preloaded on every node and there is no registry,
// so it is never pulled.
func podBase(ns, name, app, node, image string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels(app)},
		Spec: corev1.PodSpec{
			NodeName:                      node,
			AutomountServiceAccountToken:  ptr(false),
			EnableServiceLinks:            ptr(false),
			TerminationGracePeriodSeconds: ptr(int64(1)),
			// Pinned pods skip the scheduler, so tolerate what a control
			// plane that also runs pods might be tainted with.
			Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}},
			Containers: []corev1.Container{{
				Name:            "main",
				Image:           image,
				ImagePullPolicy: corev1.PullNever,
			}},
		},
	}
}

// serverPod serves, on ServerPort, a page holding the name of the node it
// runs on (from the downward API), so a client can tell which node answered.
func serverPod(ns, name, node, image string) *corev1.Pod {
	p := podBase(ns, name, serverApp, node, image)
	p.Spec.RestartPolicy = corev1.RestartPolicyAlways
	c := &p.Spec.Containers[0]
	c.Command = []string{"sh", "-c", fmt.Sprintf(`mkdir -p /www && echo "$NODE_NAME" > /www/index.html && exec httpd -f -p %d -h /www`, ServerPort)}
	c.Env = []corev1.EnvVar{{Name: "NODE_NAME", ValueFrom: &corev1.EnvVarSource{
		FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"},
	}}}
	c.Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: ServerPort, Protocol: corev1.ProtocolTCP}}
	// The kubelet probing the pod IP proves node-to-pod reachability, and
	// only ready servers become service endpoints.
	c.ReadinessProbe = &corev1.Probe{
		ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/", Port: intstr.FromInt32(ServerPort)}},
		PeriodSeconds: 2, TimeoutSeconds: 5, FailureThreshold: 3,
	}
	return p
}

// clientPod runs cmd until it succeeds (up to tries times, two seconds
// apart: kube-proxy and CoreDNS may lag behind a new service) and exits 0
// with cmd's output followed by a marker line, or 1 with its last output.
func clientPod(ns, name, node, image, cmd string, tries int) *corev1.Pod {
	p := podBase(ns, name, clientApp, node, image)
	p.Spec.RestartPolicy = corev1.RestartPolicyNever
	p.Spec.Containers[0].Command = []string{"sh", "-c", retryScript(cmd, tries)}
	return p
}

func retryScript(cmd string, tries int) string {
	return fmt.Sprintf(`i=1
while :; do
  if out=$(%s 2>&1); then echo "$out"; echo "%s $i tries"; exit 0; fi
  if [ $i -ge %d ]; then echo "$out"; echo "kubelab-check: failed $i tries"; exit 1; fi
  i=$((i+1)); sleep 2
done`, cmd, okMarker, tries)
}

// wgetCmd fetches url with a per-try timeout. Not wget -T: Debian's static
// busybox 1.35, which the test image carries, segfaults with it.
func wgetCmd(url string) string { return fmt.Sprintf("timeout 5 wget -q -O - %s", url) }

func nslookupCmd(name string) string { return "nslookup " + name }

func webService(ns string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: WebService, Namespace: ns, Labels: labels(serverApp)},
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeClusterIP,
			Selector: map[string]string{"app": serverApp},
			Ports: []corev1.ServicePort{{Name: "http", Port: ServicePort, TargetPort: intstr.FromInt32(ServerPort),
				Protocol: corev1.ProtocolTCP}},
		},
	}
}

func nodePortService(ns string, nodePort int) *corev1.Service {
	s := webService(ns)
	s.Name = NodePortService
	s.Spec.Type = corev1.ServiceTypeNodePort
	s.Spec.Ports[0].NodePort = int32(nodePort)
	return s
}

// clientCheck is one sub-check run by a client pod: which node runs it,
// what it runs and which answers count as a pass.
type clientCheck struct {
	title  string
	pod    *corev1.Pod
	accept []string // one output line must equal one of these
}

// checkEnv is what the client checks need to know about the cluster.
type checkEnv struct {
	ns, image, domain    string
	nodeA, nodeB         string // nodeA == nodeB with a single worker
	serverA, serverB     string // pod IPs of the servers on nodeA, nodeB
	webIP, apiIP         string // ClusterIPs of the web and kubernetes services
	nodePort             int    // 0: no NodePort check
	nodePortTarget       string // node address the in-cluster NodePort check dials
	nodePortTargetNodeIs string // the node that address belongs to
	tries                int
}

func hostPort(ip string, port int) string {
	if strings.Contains(ip, ":") {
		return fmt.Sprintf("[%s]:%d", ip, port)
	}
	return fmt.Sprintf("%s:%d", ip, port)
}

// clientChecks lists the in-cluster sub-checks in report order.
func clientChecks(e checkEnv) []clientCheck {
	servers := []string{e.nodeA, e.nodeB}
	web := fmt.Sprintf("%s.%s.svc.%s", WebService, e.ns, e.domain)
	api := "kubernetes.default.svc." + e.domain
	checks := []clientCheck{
		{title: fmt.Sprintf("pod network %s -> pod on %s", e.nodeA, e.nodeB),
			pod:    clientPod(e.ns, "pod-a-to-b", e.nodeA, e.image, wgetCmd("http://"+hostPort(e.serverB, ServerPort)+"/"), e.tries),
			accept: []string{e.nodeB}},
		{title: fmt.Sprintf("pod network %s -> pod on %s", e.nodeB, e.nodeA),
			pod:    clientPod(e.ns, "pod-b-to-a", e.nodeB, e.image, wgetCmd("http://"+hostPort(e.serverA, ServerPort)+"/"), e.tries),
			accept: []string{e.nodeA}},
		{title: fmt.Sprintf("service by ClusterIP %s from %s", e.webIP, e.nodeA),
			pod:    clientPod(e.ns, "svc-ip", e.nodeA, e.image, wgetCmd("http://"+hostPort(e.webIP, ServicePort)+"/"), e.tries),
			accept: servers},
		{title: "DNS " + api,
			pod:    clientPod(e.ns, "dns-api", e.nodeB, e.image, nslookupCmd(api), e.tries),
			accept: []string{"Address: " + e.apiIP, "Address 1: " + e.apiIP}},
		{title: "DNS " + web,
			pod:    clientPod(e.ns, "dns-web", e.nodeA, e.image, nslookupCmd(web), e.tries),
			accept: []string{"Address: " + e.webIP, "Address 1: " + e.webIP}},
		{title: fmt.Sprintf("service by name %s from %s", WebService, e.nodeB),
			pod:    clientPod(e.ns, "svc-name", e.nodeB, e.image, wgetCmd(fmt.Sprintf("http://%s/", WebService)), e.tries),
			accept: servers},
	}
	if e.nodePort != 0 {
		checks = append(checks, clientCheck{
			title:  fmt.Sprintf("NodePort %d of %s from a pod on %s", e.nodePort, e.nodePortTargetNodeIs, e.nodeA),
			pod:    clientPod(e.ns, "nodeport", e.nodeA, e.image, wgetCmd("http://"+hostPort(e.nodePortTarget, e.nodePort)+"/"), e.tries),
			accept: servers,
		})
	}
	return checks
}

// answer finds the accepted line in a check pod's output.
func answer(out string, accept []string) (string, bool) {
	for _, l := range strings.Split(out, "\n") {
		// busybox nslookup separates with tabs or spaces.
		l = strings.Join(strings.Fields(l), " ")
		for _, a := range accept {
			if l == a {
				return l, true
			}
		}
	}
	return "", false
}

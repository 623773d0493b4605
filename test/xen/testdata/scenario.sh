#!/bin/sh
# The nested Xen scenario, run as root in the test's dom0 from the payload
# disk: kubelab up of a one-node cluster (control plane and etcd) with
# hypervisor: xen, then status, ssh, logs, console, stop, start and
# destroy. Every check prints "XENTEST-OK <name>" or "XENTEST-FAIL <name>:
# <why>"; the Go test wants each of its names OK, and XENTEST-DONE.
# scenario.env sets LAB, NODE and ADDR.
set -u
P=/payload
. $P/scenario.env
KL="$P/kubelab --dir $P/lab"
KC="$P/kubectl --kubeconfig $P/lab/clusters/k1/kubeconfig --request-timeout=20s"
CONSOLE=$P/lab/clusters/k1/nodes/$NODE/console.log
t0=$(date +%s)
last=$t0
step() { now=$(date +%s); echo "XENTEST-STEP $1 $((now - last))"; last=$now; }
ok() { echo "XENTEST-OK $1"; }
fail() { echo "XENTEST-FAIL $1: $2"; }
finish() {
	echo "XENTEST-DONE $(($(date +%s) - t0))"
	exit 0
}
check() { # name, what it said, command...
	name=$1
	shift
	if out=$("$@" 2>&1); then ok "$name"; else fail "$name" "$(echo "$out" | tail -n 15)"; fi
}
readyz() { [ "$($KC get --raw /readyz 2>&1)" = ok ]; }
domain_listed() { xl list 2>/dev/null | grep -q "^$LAB-$NODE "; }
etcd_healthy() {
	$KL ssh "$NODE" /usr/local/bin/etcdctl --endpoints="https://$ADDR:2379" \
		--cacert=/etc/kubernetes/pki/etcd/ca.crt \
		--cert=/etc/kubernetes/pki/etcd/apiserver-client.crt \
		--key=/etc/kubernetes/pki/etcd/apiserver-client.key endpoint health 2>&1 | grep "is healthy"
}

echo "XENTEST-XEN $(xl info | grep -E '^(xen_version|free_memory|nr_cpus)' | tr -s ' ' | tr '\n' ';')"

# Through a pipe: progress as plain lines, not a terminal's redrawn ones.
{
	$KL up --boot-timeout 25m
	echo $? >/tmp/up.rc
} 2>&1 | cat
if [ "$(cat /tmp/up.rc)" = 0 ]; then ok up; else
	fail up "kubelab up failed"
	echo "--- the guest's Xen console:"
	tail -n 80 "$CONSOLE"
	for c in "systemctl list-jobs --no-pager" "systemctl --failed --no-pager" \
		"journalctl -b --no-pager -o short-monotonic -n 120 -u etcd -u kubelab-ready -u containerd -u kubelab-images -u kube-apiserver"; do
		echo "--- $NODE: $c"
		timeout 120 $KL ssh "$NODE" $c 2>&1 | tail -n 120
	done
	finish
fi
step up
echo "--- xl list and xl list -l as this Xen prints them:"
xl list
xl list -l "$LAB-$NODE" | head -c 4000
echo
check marker grep -q "KUBELAB-READY $NODE" "$CONSOLE"
check xl-list domain_listed
check domain-file grep -q "^type = \"pv\"" "$P/lab/clusters/k1/nodes/$NODE/$NODE.cfg"
check etcd etcd_healthy
check readyz readyz
state() { $KL status -o json | tr -d ' \n' | grep -q "\"node\":\"$NODE\"[^}]*\"state\":\"$1\""; }
check status state running
check ssh sh -c "[ \"\$($KL ssh $NODE hostname)\" = $NODE ]"
check logs sh -c "$KL logs $NODE kube-apiserver | grep -q kube-apiserver"
check console sh -c "timeout 5 $KL console $NODE | grep -q KUBELAB-READY"
step checks

check stop $KL stop -q
check stop-no-domain sh -c "! xl list | grep -q '^$LAB-$NODE '"
check status-stopped state stopped
step stop

check start $KL start -q --boot-timeout 25m
check readyz-after-start readyz
check marker-twice sh -c "[ \$(grep -c 'KUBELAB-READY $NODE' $CONSOLE) -ge 2 ]"
step start

check destroy $KL destroy -q
check destroy-no-domain sh -c "! xl list | grep -q '^$LAB-'"
check destroy-no-console-log sh -c "[ ! -e /var/log/xen/console/guest-$LAB-$NODE.log ]"
check destroy-no-disk sh -c "[ ! -e $P/lab/clusters/k1/nodes/$NODE/disk.qcow2 ] && [ ! -e $P/lab/clusters/k1/nodes/$NODE/disk.raw ]"
check destroy-no-bridge sh -c "! ip link show kl-$LAB 2>/dev/null"
step destroy
finish

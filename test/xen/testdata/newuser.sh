#!/bin/sh
# The README's Xen steps as a new user follows them, in the test's dom0:
# the toolstack answers (xl info), kubelab and kubectl go on the PATH,
# kubelab init writes the default topology (a control plane and two
# workers), hypervisor: xen is set in lab.yaml, kubelab up, kubectl get
# nodes (the two workers Ready) with the kubeconfig up wrote, kubelab status and kubelab destroy.
# The node image is in the lab directory already: dom0 is offline and
# has no component cache. Output as scenario.sh's: XENTEST-OK/FAIL lines.
set -u
P=/payload
t0=$(date +%s)
last=$t0
step() { now=$(date +%s); echo "XENTEST-STEP $1 $((now - last))"; last=$now; }
ok() { echo "XENTEST-OK $1"; }
fail() { echo "XENTEST-FAIL $1: $2"; }
check() {
	name=$1
	shift
	if out=$("$@" 2>&1); then ok "$name"; else fail "$name" "$(echo "$out" | tail -n 15)"; fi
}

check xl-info xl info
cp $P/kubelab $P/kubectl /usr/local/bin/
export KUBELAB_HOME=$P/lab
check init kubelab init
check set-xen sed -i 's/^hypervisor: qemu .*/hypervisor: xen/' $KUBELAB_HOME/lab.yaml
grep -n '^hypervisor' $KUBELAB_HOME/lab.yaml
check plan kubelab plan
step setup

{
	kubelab up --boot-timeout 40m
	echo $? >/tmp/up.rc
} 2>&1 | cat
if [ "$(cat /tmp/up.rc)" = 0 ]; then ok up; else fail up "kubelab up failed"; fi
step up

KUBECONFIG=$KUBELAB_HOME/clusters/k1/kubeconfig
export KUBECONFIG
kubectl get nodes -o wide
# The control plane runs no kubelet (roles control-plane and etcd only):
# the cluster's nodes are the two workers.
ready() { [ "$(kubectl get nodes --no-headers 2>/dev/null | grep -c ' Ready ')" = 2 ]; }
check workers-ready ready
kubelab status
check status sh -c "[ \$(kubelab status -o json | tr -d ' \n' | grep -o '\"state\":\"running\"' | wc -l) = 3 ]"
xl list
step checks

check destroy kubelab destroy -q
check destroy-no-domain sh -c "! xl list | grep -q '^lab-'"
step destroy
echo "XENTEST-DONE $(($(date +%s) - t0))"

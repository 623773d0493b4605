// Package pki creates and keeps every cluster's certificates, keys and
// kubeconfigs under <labdir>/clusters/<cluster>/pki/. It derives what a
// cluster needs from the address plan, reuses whatever already exists on
// disk (it never rotates a key on its own), adds what is missing and
// re-issues a leaf with its existing key when the plan asks for different
// names or addresses. Callers ask for credentials by the names in names.go.
package pki

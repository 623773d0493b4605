package verify

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"

	"github.com/kubelab/kubelab/internal/nodeconfig"
)

// FieldManager owns the fields kubelab applies.
const FieldManager = "kubelab"

// Object names one applied object, for progress output.
type Object struct {
	Manifest  string // add-on file name, e.g. rbac.yaml
	Kind      string
	Namespace string
	Name      string
}

func (o Object) String() string {
	if o.Namespace == "" {
		return fmt.Sprintf("%s %s", o.Kind, o.Name)
	}
	return fmt.Sprintf("%s %s/%s", o.Kind, o.Namespace, o.Name)
}

// Apply applies every document of every manifest, in order, with
// server-side apply as field manager "kubelab". Applying the same manifests
// again changes nothing. kubelab owns the add-ons, so it takes over fields
// someone else changed (force) instead of failing on a conflict.
// Namespaced objects without a namespace go to "default".
func Apply(ctx context.Context, cfg *rest.Config, manifests []nodeconfig.Manifest) ([]Object, error) {
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("apply add-ons: discovery client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("apply add-ons: dynamic client: %w", err)
	}
	cached := memory.NewMemCacheClient(dc)
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(cached)
	var done []Object
	for _, m := range manifests {
		objs, err := decodeManifest(m)
		if err != nil {
			return done, err
		}
		for i, obj := range objs {
			o := Object{Manifest: m.Name, Kind: obj.GetKind(), Namespace: obj.GetNamespace(), Name: obj.GetName()}
			ns, err := applyOne(ctx, dyn, mapper, obj)
			o.Namespace = ns
			if err != nil {
				return done, fmt.Errorf("apply %s, document %d (%s): %w", m.Name, i+1, o, err)
			}
			done = append(done, o)
		}
	}
	return done, nil
}

// decodeManifest splits multi-document YAML into objects, skipping
// documents that are empty or only comments.
func decodeManifest(m nodeconfig.Manifest) ([]*unstructured.Unstructured, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(m.YAML)))
	var out []*unstructured.Unstructured
	for doc := 1; ; doc++ {
		raw, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("manifest %s, document %d: %w", m.Name, doc, err)
		}
		js, err := yaml.YAMLToJSON(raw)
		if err != nil {
			return nil, fmt.Errorf("manifest %s, document %d: %w", m.Name, doc, err)
		}
		if s := strings.TrimSpace(string(js)); s == "null" || s == "{}" || s == "" {
			continue
		}
		obj := &unstructured.Unstructured{}
		if err := obj.UnmarshalJSON(js); err != nil {
			return nil, fmt.Errorf("manifest %s, document %d: %w", m.Name, doc, err)
		}
		if obj.GetName() == "" {
			return nil, fmt.Errorf("manifest %s, document %d (%s): metadata.name is empty", m.Name, doc, obj.GetKind())
		}
		out = append(out, obj)
	}
}

// applyOne applies obj and returns the namespace it went to. An unknown
// kind refreshes discovery once, for kinds that a previous document (a
// CRD) has just added.
func applyOne(ctx context.Context, dyn dynamic.Interface, mapper *restmapper.DeferredDiscoveryRESTMapper, obj *unstructured.Unstructured) (string, error) {
	gvk := obj.GroupVersionKind()
	mapping, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if meta.IsNoMatchError(err) {
		mapper.Reset()
		mapping, err = mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	}
	if err != nil {
		return obj.GetNamespace(), fmt.Errorf("find the API resource of %s: %w", gvk, err)
	}
	var ri dynamic.ResourceInterface
	ns := ""
	if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
		ns = obj.GetNamespace()
		if ns == "" {
			ns = metav1.NamespaceDefault
			obj.SetNamespace(ns)
		}
		ri = dyn.Resource(mapping.Resource).Namespace(ns)
	} else {
		ri = dyn.Resource(mapping.Resource)
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err = ri.Apply(rctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: FieldManager, Force: true})
	return ns, err
}

package agent

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	kinformers "k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// labelServiceProxyName marks a Service that another proxy than
// kube-proxy (and this agent) serves.
const labelServiceProxyName = "service.kubernetes.io/service-proxy-name"

// byService indexes EndpointSlices by their service's namespace/name.
const byService = "service"

// informers are the agent's shared informers, as kube-proxy sets them up:
// Services without service-proxy-name and not headless, EndpointSlices
// not of headless services, and every Node.
type informers struct {
	factories []kinformers.SharedInformerFactory
	services  corelisters.ServiceLister
	slices    cache.Indexer
	nodes     corelisters.NodeLister
	synced    []cache.InformerSynced
}

// startInformers starts the informers, whose events queue work.
func (a *Agent) startInformers(ctx context.Context) (*informers, error) {
	selector := func(key string) string {
		req, err := labels.NewRequirement(key, selection.DoesNotExist, nil)
		if err != nil {
			panic(err) // the keys are constants
		}
		return labels.NewSelector().Add(*req).String()
	}
	trim := kinformers.WithTransform(func(obj any) (any, error) {
		if m, err := meta.Accessor(obj); err == nil {
			m.SetManagedFields(nil)
		}
		return obj, nil
	})
	svcFactory := kinformers.NewSharedInformerFactoryWithOptions(a.client, 0, trim,
		kinformers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.LabelSelector = selector(labelServiceProxyName)
			o.FieldSelector = fields.OneTermNotEqualSelector("spec.clusterIP", corev1.ClusterIPNone).String()
		}))
	sliceFactory := kinformers.NewSharedInformerFactoryWithOptions(a.client, 0, trim,
		kinformers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.LabelSelector = selector(corev1.IsHeadlessService)
		}))
	nodeFactory := kinformers.NewSharedInformerFactoryWithOptions(a.client, 0, trim)
	inf := &informers{factories: []kinformers.SharedInformerFactory{svcFactory, sliceFactory, nodeFactory}}

	svcInformer := svcFactory.Core().V1().Services()
	sliceInformer := sliceFactory.Discovery().V1().EndpointSlices().Informer()
	nodeInformer := nodeFactory.Core().V1().Nodes()
	err := sliceInformer.AddIndexers(cache.Indexers{byService: byServiceIndex})
	if err != nil {
		return nil, fmt.Errorf("index EndpointSlices: %w", err)
	}
	inf.services, inf.slices, inf.nodes = svcInformer.Lister(), sliceInformer.GetIndexer(), nodeInformer.Lister()

	handlers := []struct {
		informer cache.SharedIndexInformer
		kind     string
		keys     func(obj any) []string
	}{
		{svcInformer.Informer(), kindService, objectKey},
		{sliceInformer, kindService, func(obj any) []string {
			keys, _ := byServiceIndex(obj)
			return keys
		}},
		{nodeInformer.Informer(), kindNode, objectKey},
	}
	for _, h := range handlers {
		enqueue := func(obj any) {
			for _, key := range h.keys(obj) {
				a.queue.Add(item{h.kind, key})
			}
		}
		reg, err := h.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    enqueue,
			UpdateFunc: func(_, obj any) { enqueue(obj) },
			DeleteFunc: enqueue,
		})
		if err != nil {
			return nil, fmt.Errorf("watch %s: %w", h.kind, err)
		}
		inf.synced = append(inf.synced, reg.HasSynced)
	}
	for _, f := range inf.factories {
		f.Start(ctx.Done())
	}
	return inf, nil
}

// byServiceIndex is the byService index of an EndpointSlice, also one in
// a deletion tombstone.
func byServiceIndex(obj any) ([]string, error) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	s, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return nil, nil
	}
	if name := s.Labels[discoveryv1.LabelServiceName]; name != "" {
		return []string{s.Namespace + "/" + name}, nil
	}
	return nil, nil
}

// objectKey is the namespace/name (or name) of obj, also of one in a
// deletion tombstone.
func objectKey(obj any) []string {
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil {
		return nil
	}
	return []string{key}
}

// waitForSync waits until the informers have listed the API and queued
// every object, or ctx ends (false).
func (inf *informers) waitForSync(ctx context.Context) bool {
	return cache.WaitForCacheSync(ctx.Done(), inf.synced...)
}

// shutdown stops the informers.
func (inf *informers) shutdown() {
	for _, f := range inf.factories {
		f.Shutdown()
	}
}

// serviceNames lists the services the agent watches, as namespace/name.
func (inf *informers) serviceNames() []string {
	svcs, _ := inf.services.List(labels.Everything()) // a cache: no error
	names := make([]string, len(svcs))
	for i, s := range svcs {
		names[i] = s.Namespace + "/" + s.Name
	}
	return names
}

// endpointSlices returns the EndpointSlices of the service namespace/name.
func (inf *informers) endpointSlices(name string) []*discoveryv1.EndpointSlice {
	objs, _ := inf.slices.ByIndex(byService, name) // the index exists
	out := make([]*discoveryv1.EndpointSlice, len(objs))
	for i, o := range objs {
		out[i] = o.(*discoveryv1.EndpointSlice)
	}
	return out
}

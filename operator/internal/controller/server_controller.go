package controller

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	kerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
	"github.com/hyperdhcp/hyperdhcp/operator/internal/consent"
	"github.com/hyperdhcp/hyperdhcp/operator/internal/render"
)

// Finalizer removes what a Server has outside its namespace (RoleBindings
// in the namespaces it serves, a ClusterRoleBinding), where owner
// references cannot reach.
const Finalizer = "hyperdhcp.io/foreign-rbac"

// ServerReconciler turns each Server into hyperdhcpd's ServiceAccount,
// RBAC, ConfigMap, PVC and Deployment, and reports their state.
type ServerReconciler struct {
	client.Client
	// APIReader reads past the cache, which holds only objects labelled as
	// the operator's: a child that lost its label is found through it and
	// taken back instead of being created twice. nil: none (Client is not
	// cached, as in tests).
	APIReader client.Reader
	Recorder  recorder.EventRecorder
	// Image is the hyperdhcpd image used when a Server names none.
	Image string
	// MaxConcurrentReconciles bounds parallel reconciles (default 1).
	MaxConcurrentReconciles int
	// NetworkAttachmentRecheck is how soon a Server whose
	// NetworkAttachmentDefinition is missing is looked at again (default 30s).
	NetworkAttachmentRecheck time.Duration
	// AllowAllNamespaces lets Servers with kubevirt.allNamespaces read VMs
	// cluster-wide (the operator's --allow-all-namespaces). Off, they serve
	// their own namespace only: whoever may create a Server in some
	// namespace must not thereby read every namespace's VMs.
	AllowAllNamespaces bool
}

// servedNamespacesField indexes Servers by the namespaces listed in
// spec.kubevirt.namespaces, to find those whose grant a Namespace's consent
// annotation changes.
const servedNamespacesField = ".spec.kubevirt.namespaces"

// The operator's own permissions. It must hold every permission it grants
// hyperdhcpd (Kubernetes refuses RBAC escalation), hence the servers and
// events rules, and "bind" on the VM reader ClusterRole it binds.
//
// +kubebuilder:rbac:groups="",resources=configmaps;serviceaccounts;persistentvolumeclaims,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=apps,resources=deployments,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=services,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;create;delete
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=roles;rolebindings;clusterrolebindings,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=clusterroles,verbs=bind,resourceNames=hyperdhcp-vm-reader
// +kubebuilder:rbac:groups=k8s.cni.cncf.io,resources=network-attachment-definitions,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get;list;watch

// SetupWithManager registers the controller.
func (r *ServerReconciler) SetupWithManager(mgr ctrl.Manager) error {
	err := mgr.GetFieldIndexer().IndexField(context.Background(), &hyperdhcpv1beta1.Server{}, servedNamespacesField,
		func(obj client.Object) []string {
			if kv := obj.(*hyperdhcpv1beta1.Server).Spec.KubeVirt; kv != nil {
				return kv.Namespaces
			}
			return nil
		})
	if err != nil {
		return fmt.Errorf("index Servers by served namespace: %w", err)
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("server").
		// Status writes (hyperdhcpd's pool counts, our conditions) do not
		// need a reconcile, except hyperdhcpd's lease storage report and
		// the generation it serves.
		For(&hyperdhcpv1beta1.Server{}, builder.WithPredicates(predicate.Or(predicate.GenerationChangedPredicate{}, leaseStorageChanged, servedChanged))).
		Owns(&corev1.ServiceAccount{}).
		Owns(&rbacv1.Role{}).
		Owns(&rbacv1.RoleBinding{}).
		Owns(&corev1.ConfigMap{}).
		Owns(&corev1.PersistentVolumeClaim{}).
		Owns(&appsv1.Deployment{}).
		// Consent given or withdrawn changes the grant without a Server edit.
		Watches(&corev1.Namespace{}, handler.EnqueueRequestsFromMapFunc(r.serversListing),
			builder.WithPredicates(consentChanged)).
		WithOptions(controller.Options{MaxConcurrentReconciles: r.MaxConcurrentReconciles}).
		Complete(r)
}

// consentChanged passes the Namespace events that can change a grant:
// creation, deletion and a changed consent annotation.
var consentChanged = predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
	return e.ObjectOld.GetAnnotations()[consent.Annotation] != e.ObjectNew.GetAnnotations()[consent.Annotation]
}}

// leaseStorageChanged passes the Server updates where hyperdhcpd reported
// that its lease writes started failing or succeed again.
var leaseStorageChanged = predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
	old, oldOK := e.ObjectOld.(*hyperdhcpv1beta1.Server)
	updated, newOK := e.ObjectNew.(*hyperdhcpv1beta1.Server)
	return oldOK && newOK && leaseStorageFault(old) != leaseStorageFault(updated)
}}

// servedChanged passes the Server updates where hyperdhcpd reported that
// it serves another generation, or refused one.
var servedChanged = predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
	old, oldOK := e.ObjectOld.(*hyperdhcpv1beta1.Server)
	updated, newOK := e.ObjectNew.(*hyperdhcpv1beta1.Server)
	if !oldOK || !newOK {
		return false
	}
	before, after := old.Status.Served, updated.Status.Served
	if before == nil || after == nil {
		return before != after
	}
	return before.Generation != after.Generation || before.RefusedGeneration != after.RefusedGeneration ||
		before.RefusedMessage != after.RefusedMessage
}}

// specRefused is hyperdhcpd's report of an edit it could not apply, empty
// when there is none.
func specRefused(server *hyperdhcpv1beta1.Server) string {
	s := server.Status.Served
	if s == nil || s.RefusedMessage == "" || s.RefusedGeneration <= s.Generation {
		return ""
	}
	return fmt.Sprintf("hyperdhcpd refused generation %d of the spec and serves generation %d: %s", s.RefusedGeneration, s.Generation, s.RefusedMessage)
}

// leaseStorageFault is hyperdhcpd's report of failing lease writes, empty
// when there is none.
func leaseStorageFault(server *hyperdhcpv1beta1.Server) string {
	if s := server.Status.LeaseStorage; s != nil && !s.Available {
		return "hyperdhcpd cannot write its lease database, so no REQUEST is acknowledged: " + s.Message
	}
	return ""
}

// serversListing maps a Namespace to the Servers whose kubevirt.namespaces
// list it.
func (r *ServerReconciler) serversListing(ctx context.Context, ns client.Object) []reconcile.Request {
	var servers hyperdhcpv1beta1.ServerList
	if err := r.List(ctx, &servers, client.MatchingFields{servedNamespacesField: ns.GetName()}); err != nil {
		log.FromContext(ctx).Error(err, "list the Servers that serve a namespace", "namespace", ns.GetName())
		return nil
	}
	requests := make([]reconcile.Request, 0, len(servers.Items))
	for i := range servers.Items {
		requests = append(requests, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&servers.Items[i])})
	}
	return requests
}

// Reconcile brings one Server's children to their desired state.
func (r *ServerReconciler) Reconcile(ctx context.Context, req ctrl.Request) (_ ctrl.Result, retErr error) {
	server := &hyperdhcpv1beta1.Server{}
	if err := r.Get(ctx, req.NamespacedName, server); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !server.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, r.reconcileDelete(ctx, server)
	}
	// Where hyperdhcpd may read VMs. A lookup that fails stops here: taken
	// for a refusal, it would delete the bindings consent had granted.
	grant, err := r.vmGrant(ctx, server)
	if err != nil {
		return ctrl.Result{}, err
	}
	// Only what owner references cannot reach needs a finalizer; it goes on
	// before anything is made outside the namespace, and the RBAC phase
	// takes it off once nothing is left there.
	// A patch of the finalizers alone: an Update would write back the spec
	// as Go renders it (leaseTime "1h" as "1h0m0s") and so bump the
	// generation of a Server nobody edited.
	if before := server.DeepCopy(); grant.Foreign(server.Namespace) && controllerutil.AddFinalizer(server, Finalizer) {
		if err := r.Patch(ctx, server, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
			return ctrl.Result{}, fmt.Errorf("add finalizer: %w", err)
		}
	}

	original := server.DeepCopy()
	defer func() {
		server.Status.ObservedGeneration = server.Generation
		if apiequality.Semantic.DeepEqual(original.Status, server.Status) {
			return // a no-op resync writes nothing
		}
		// A merge patch carries only what changed, so status.pool, which
		// hyperdhcpd owns, is never overwritten.
		if err := r.Status().Patch(ctx, server, client.MergeFrom(original)); err != nil {
			retErr = errors.Join(retErr, fmt.Errorf("patch status: %w", err))
		}
	}()

	if err := server.Validate(); err != nil {
		// Retrying cannot fix a spec: report it and wait for an edit. The
		// pod already running keeps serving the spec before it: Ready
		// follows it still.
		var running []*appsv1.Deployment
		for _, replica := range render.Replicas(server) {
			d := &appsv1.Deployment{}
			if r.Get(ctx, types.NamespacedName{Namespace: server.Namespace, Name: render.ReplicaName(server, replica)}, d) == nil {
				running = append(running, d)
			}
		}
		if len(running) > 0 {
			setDeploymentConditions(server, running)
		}
		setInvalidSpec(server, err)
		r.Recorder.Eventf(server, nil, corev1.EventTypeWarning, hyperdhcpv1beta1.ReasonInvalidSpec, "Validate", "%v", err)
		return ctrl.Result{}, nil
	}

	var (
		deployments       []*appsv1.Deployment
		attachmentMissing string
		leaseHolder       string
		// heldBack is the active replica's Deployment whose new pod
		// template waits for the standby's (a pair rolls one at a time).
		heldBack string
		// standbyRolledOut: the standby's Deployment runs its current
		// template, available (its pod is ready once it is in sync).
		standbyRolledOut bool
	)
	// Every phase runs even when an earlier one failed, so one broken child
	// neither hides the others' errors nor holds back their repair.
	var errs []error
	run := func(phases []phase) {
		for _, p := range phases {
			if err := p.run(); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", p.name, err))
			}
		}
	}
	run([]phase{
		{"ServiceAccount", func() error { return r.reconcileServiceAccount(ctx, server) }},
		{"RBAC", func() error { return r.reconcileRBAC(ctx, server, grant) }},
		{"Pair", func() (err error) { leaseHolder, err = r.reconcilePair(ctx, server); return err }},
		{"NetworkAttachment", func() (err error) { attachmentMissing, err = r.checkNetworkAttachment(ctx, server); return err }},
	})
	// A pair rolls one replica at a time, the standby first: the active's
	// pod template waits until the standby's Deployment is available.
	active := activeReplica(server, leaseHolder)
	var replicaPhases []phase
	for _, replica := range standbyFirst(render.Replicas(server), active) {
		var configHash string
		suffix := ""
		if replica.Index > 0 {
			suffix = fmt.Sprintf(" (replica %d)", replica.Index)
		}
		isActive := server.Spec.HighAvailability != nil && replica.Index == active
		replicaPhases = append(replicaPhases, []phase{
			{"ConfigMap" + suffix, func() (err error) {
				configHash, err = r.reconcileConfigMap(ctx, render.WatchOnly(server, grant.Namespaces, grant.Cluster), replica)
				return err
			}},
			{"PersistentVolumeClaim" + suffix, func() error { return r.reconcilePVC(ctx, server, replica) }},
			{"Deployment" + suffix, func() error {
				if !isActive {
					standbyRolledOut = false // until shown below
				}
				if configHash == "" {
					// The ConfigMap phase failed and says why. A pod rolled now
					// would read the old configuration and not restart when the
					// new one is written (the hash would not change again).
					return nil
				}
				d, held, err := r.reconcileDeployment(ctx, server, replica, configHash, isActive && !standbyRolledOut)
				if d != nil && err == nil {
					deployments = append(deployments, d)
				}
				if held {
					heldBack = d.Name
				}
				if !isActive {
					standbyRolledOut = err == nil && d != nil && rolledOut(d) && d.Status.AvailableReplicas > 0
				}
				return err
			}},
		}...)
	}
	run(replicaPhases)
	var result ctrl.Result
	var replicaProblems []problem
	if len(deployments) > 0 {
		replicaProblems = setDeploymentConditions(server, deployments)
	}
	if heldBack != "" {
		setConditions(server, metav1.Condition{Type: hyperdhcpv1beta1.ConditionProgressing, Status: metav1.ConditionTrue,
			Reason:  hyperdhcpv1beta1.ReasonStandbyFirst,
			Message: fmt.Sprintf("the standby replica rolls out first; Deployment %s (the active) follows once the standby is available and in sync", heldBack)})
	}
	setApplying(server)
	// Degraded names every problem, the most severe first: a failing phase,
	// then leases that cannot be written, then a pod that cannot join its
	// network, then VMs not served for want of consent.
	var problems []problem
	if len(errs) > 0 {
		problems = append(problems, problem{hyperdhcpv1beta1.ReasonReconcileFailed, kerrors.NewAggregate(errs).Error()})
	}
	refused := specRefused(server)
	if refused != "" {
		problems = append(problems, problem{hyperdhcpv1beta1.ReasonSpecRefused, refused})
	}
	storageFault := leaseStorageFault(server)
	if storageFault != "" {
		problems = append(problems, problem{hyperdhcpv1beta1.ReasonLeaseStorageUnavailable, storageFault})
	}
	problems = append(problems, replicaProblems...)
	if attachmentMissing != "" {
		problems = append(problems, problem{hyperdhcpv1beta1.ReasonNetworkAttachmentNotFound, attachmentMissing})
		setNetworkAttachmentNotFound(server, attachmentMissing)
		// NetworkAttachmentDefinitions are not watched (their CRD may come
		// and go): look again later.
		result.RequeueAfter = r.NetworkAttachmentRecheck
		if result.RequeueAfter <= 0 {
			result.RequeueAfter = 30 * time.Second
		}
	}
	consentProblems := grantProblems(server, grant)
	problems = append(problems, consentProblems...)
	setDegraded(server, problems)
	// A Warning when a refusal is new, not on every resync.
	previous := meta.FindStatusCondition(original.Status.Conditions, hyperdhcpv1beta1.ConditionDegraded)
	storageWasFaulty := previous != nil && strings.Contains(previous.Message, "cannot write its lease database")
	if refused != "" && (previous == nil || !strings.Contains(previous.Message, refused)) {
		r.Recorder.Eventf(server, nil, corev1.EventTypeWarning, hyperdhcpv1beta1.ReasonSpecRefused, "Apply", "%s", refused)
	}
	switch {
	case storageFault != "" && !storageWasFaulty:
		r.Recorder.Eventf(server, nil, corev1.EventTypeWarning, hyperdhcpv1beta1.ReasonLeaseStorageUnavailable, "LeaseStorage", "%s", storageFault)
	case storageFault == "" && storageWasFaulty:
		r.Recorder.Eventf(server, nil, corev1.EventTypeNormal, "LeaseStorageAvailable", "LeaseStorage", "hyperdhcpd writes its lease database again")
	}
	for _, p := range consentProblems {
		if previous == nil || !strings.Contains(previous.Message, p.message) {
			r.Recorder.Eventf(server, nil, corev1.EventTypeWarning, p.reason, "Grant", "%s", p.message)
		}
	}
	if len(errs) > 0 {
		err := kerrors.NewAggregate(errs)
		r.Recorder.Eventf(server, nil, corev1.EventTypeWarning, hyperdhcpv1beta1.ReasonReconcileFailed, "Reconcile", "%v", err)
		return ctrl.Result{}, fmt.Errorf("reconcile: %w", err)
	}
	return result, nil
}

// vmGrant decides where server's hyperdhcpd may read VMs, reading the
// consent of the other namespaces it lists.
func (r *ServerReconciler) vmGrant(ctx context.Context, server *hyperdhcpv1beta1.Server) (consent.Grant, error) {
	var errs []error
	annotations := func(name string) map[string]string {
		ns := &corev1.Namespace{}
		if err := r.Get(ctx, client.ObjectKey{Name: name}, ns); err != nil {
			if !apierrors.IsNotFound(err) { // a missing namespace consents to nothing
				errs = append(errs, fmt.Errorf("get Namespace %s: %w", name, err))
			}
			return nil
		}
		return ns.Annotations
	}
	grant := consent.Decide(server, annotations, r.AllowAllNamespaces)
	if err := errors.Join(errs...); err != nil {
		return consent.Grant{}, fmt.Errorf("read namespace consent: %w", err)
	}
	return grant, nil
}

// networkAttachmentGVK is Multus' NetworkAttachmentDefinition, read as
// unstructured: the operator needs neither Multus' Go types nor its CRD.
var networkAttachmentGVK = schema.GroupVersionKind{Group: "k8s.cni.cncf.io", Version: "v1", Kind: "NetworkAttachmentDefinition"}

// checkNetworkAttachment returns why the pod cannot join its network, or
// "" when the NetworkAttachmentDefinition exists or cannot be checked.
func (r *ServerReconciler) checkNetworkAttachment(ctx context.Context, server *hyperdhcpv1beta1.Server) (string, error) {
	nad := &unstructured.Unstructured{}
	nad.SetGroupVersionKind(networkAttachmentGVK)
	key := client.ObjectKey{Namespace: server.AttachmentNamespace(), Name: server.Spec.NetworkAttachment.Name}
	// Unstructured reads bypass the manager's cache: one GET, no informer.
	err := r.Get(ctx, key, nad)
	switch {
	case err == nil:
		return "", nil
	case meta.IsNoMatchError(err):
		// No Multus CRD here (or not yet): nothing to check against.
		log.FromContext(ctx).V(1).Info("NetworkAttachmentDefinitions are not served; not checking the network", "networkAttachment", key)
		return "", nil
	case apierrors.IsNotFound(err):
		return fmt.Sprintf("NetworkAttachmentDefinition %s does not exist: the pod cannot join its network", key), nil
	default:
		return "", fmt.Errorf("get NetworkAttachmentDefinition %s: %w", key, err)
	}
}

// apply creates or updates obj with CreateOrUpdate, where mutate copies
// every managed field from the desired object; it records an Event when
// something changed.
func (r *ServerReconciler) apply(ctx context.Context, server *hyperdhcpv1beta1.Server, obj client.Object, owned bool, mutate func() error) error {
	f := func() error {
		if owned {
			if err := controllerutil.SetControllerReference(server, obj, r.Scheme()); err != nil {
				return err
			}
		}
		return mutate()
	}
	pristine := obj.DeepCopyObject()
	result, err := controllerutil.CreateOrUpdate(ctx, r.Client, obj, f)
	if apierrors.IsAlreadyExists(err) && r.APIReader != nil {
		// The cache did not show it: it lost the label the cache selects.
		// Read it from the API server; mutate puts the label back.
		reflect.ValueOf(obj).Elem().Set(reflect.ValueOf(pristine).Elem())
		result, err = controllerutil.CreateOrUpdate(ctx, uncachedClient{r.Client, r.APIReader}, obj, f)
	}
	if err != nil {
		return err
	}
	if result != controllerutil.OperationResultNone {
		kind := fmt.Sprintf("%T", obj)[1:]
		log.FromContext(ctx).Info("applied child", "kind", kind, "object", klog.KObj(obj), "result", result)
		r.Recorder.Eventf(server, obj, corev1.EventTypeNormal, string(result), "Apply", "%s %s %s", kind, obj.GetName(), result)
	}
	return nil
}

// uncachedClient reads through reader instead of the cache.
type uncachedClient struct {
	client.Client
	reader client.Reader
}

func (c uncachedClient) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	return c.reader.Get(ctx, key, obj, opts...)
}

// setMeta copies the desired labels onto obj, keeping labels others added.
func setMeta(obj, desired client.Object) {
	labels := obj.GetLabels()
	if labels == nil {
		labels = map[string]string{}
	}
	maps.Copy(labels, desired.GetLabels())
	obj.SetLabels(labels)
}

func (r *ServerReconciler) reconcileServiceAccount(ctx context.Context, server *hyperdhcpv1beta1.Server) error {
	desired := render.ServiceAccount(server)
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: desired.Name, Namespace: desired.Namespace}}
	return r.apply(ctx, server, sa, true, func() error {
		setMeta(sa, desired)
		sa.AutomountServiceAccountToken = desired.AutomountServiceAccountToken
		return nil
	})
}

// reconcileRBAC makes hyperdhcpd's own Role and RoleBinding, binds the VM
// reader ClusterRole where grant allows, and removes every binding it does
// not allow (anymore).
func (r *ServerReconciler) reconcileRBAC(ctx context.Context, server *hyperdhcpv1beta1.Server, grant consent.Grant) error {
	desiredRole := render.StatusRole(server)
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: desiredRole.Name, Namespace: desiredRole.Namespace}}
	if err := r.apply(ctx, server, role, true, func() error {
		setMeta(role, desiredRole)
		role.Rules = desiredRole.Rules
		return nil
	}); err != nil {
		return err
	}
	desiredBinding := render.StatusRoleBinding(server)
	bindings := []*rbacv1.RoleBinding{desiredBinding}
	vmBindings, vmClusterBinding := render.VMReaderBindings(server, grant.Namespaces, grant.Cluster)
	bindings = append(bindings, vmBindings...)

	wanted := map[types.NamespacedName]bool{}
	for _, desired := range bindings {
		wanted[client.ObjectKeyFromObject(desired)] = true
		rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: desired.Name, Namespace: desired.Namespace}}
		owned := desired.Namespace == server.Namespace
		if err := r.apply(ctx, server, rb, owned, func() error {
			if !rb.CreationTimestamp.IsZero() && rb.RoleRef != desired.RoleRef {
				return fmt.Errorf("RoleBinding %s/%s refers to %s, not %s: delete it to let the operator recreate it",
					rb.Namespace, rb.Name, rb.RoleRef.Name, desired.RoleRef.Name) // roleRef is immutable
			}
			setMeta(rb, desired)
			rb.RoleRef, rb.Subjects = desired.RoleRef, desired.Subjects
			return nil
		}); err != nil {
			return err
		}
	}
	if vmClusterBinding != nil {
		crb := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: vmClusterBinding.Name}}
		if err := r.apply(ctx, server, crb, false, func() error {
			setMeta(crb, vmClusterBinding)
			crb.RoleRef, crb.Subjects = vmClusterBinding.RoleRef, vmClusterBinding.Subjects
			return nil
		}); err != nil {
			return err
		}
	}
	if err := r.pruneRBAC(ctx, server, wanted, vmClusterBinding != nil); err != nil {
		return err
	}
	if !grant.Foreign(server.Namespace) {
		return r.removeFinalizer(ctx, server)
	}
	return nil
}

// removeFinalizer takes the finalizer off once nothing is left outside the
// Server's namespace. It patches a copy: server keeps the state its status
// patch is computed from.
func (r *ServerReconciler) removeFinalizer(ctx context.Context, server *hyperdhcpv1beta1.Server) error {
	patched := server.DeepCopy()
	if !controllerutil.RemoveFinalizer(patched, Finalizer) {
		return nil
	}
	if err := r.Patch(ctx, patched, client.MergeFrom(server)); err != nil {
		return fmt.Errorf("remove finalizer: %w", err)
	}
	return nil
}

// pruneRBAC deletes the bindings made for server that are no longer granted
// (a namespace dropped from kubevirt.namespaces, or its consent withdrawn).
func (r *ServerReconciler) pruneRBAC(ctx context.Context, server *hyperdhcpv1beta1.Server, keep map[types.NamespacedName]bool, keepCluster bool) error {
	selector := client.MatchingLabels{render.ServerLabel: server.Name, render.ServerNamespaceLabel: server.Namespace}
	var bindings rbacv1.RoleBindingList
	if err := r.List(ctx, &bindings, selector); err != nil {
		return fmt.Errorf("list RoleBindings: %w", err)
	}
	for i := range bindings.Items {
		rb := &bindings.Items[i]
		if !keep[client.ObjectKeyFromObject(rb)] {
			if err := r.Delete(ctx, rb); client.IgnoreNotFound(err) != nil {
				return fmt.Errorf("delete RoleBinding %s/%s: %w", rb.Namespace, rb.Name, err)
			}
		}
	}
	// By label, not by name: a binding named by an earlier naming scheme
	// goes too.
	var clusterBindings rbacv1.ClusterRoleBindingList
	if err := r.List(ctx, &clusterBindings, selector); err != nil {
		return fmt.Errorf("list ClusterRoleBindings: %w", err)
	}
	for i := range clusterBindings.Items {
		crb := &clusterBindings.Items[i]
		if keepCluster && crb.Name == render.ForeignName(server) {
			continue
		}
		if err := r.Delete(ctx, crb); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("delete ClusterRoleBinding %s: %w", crb.Name, err)
		}
	}
	return nil
}

func (r *ServerReconciler) reconcileConfigMap(ctx context.Context, server *hyperdhcpv1beta1.Server, replica render.Replica) (string, error) {
	desired, hash, err := render.ConfigMap(server, replica)
	if err != nil {
		return "", err
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: desired.Name, Namespace: desired.Namespace}}
	if err := r.apply(ctx, server, cm, true, func() error {
		setMeta(cm, desired)
		cm.Data, cm.BinaryData = desired.Data, nil
		return nil
	}); err != nil {
		return "", err // no hash: the Deployment must not roll onto it
	}
	return hash, nil
}

func (r *ServerReconciler) reconcilePVC(ctx context.Context, server *hyperdhcpv1beta1.Server, replica render.Replica) error {
	desired := render.PVC(server, replica)
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: desired.Name, Namespace: desired.Namespace}}
	return r.apply(ctx, server, pvc, true, func() error {
		setMeta(pvc, desired)
		if pvc.CreationTimestamp.IsZero() {
			pvc.Spec = desired.Spec
			return nil
		}
		// A bound claim's class and modes are immutable; it may only grow.
		want := desired.Spec.Resources.Requests[corev1.ResourceStorage]
		if have := pvc.Spec.Resources.Requests[corev1.ResourceStorage]; want.Cmp(have) > 0 {
			pvc.Spec.Resources.Requests[corev1.ResourceStorage] = want
		}
		return nil
	})
}

// restartedAtAnnotation is what `kubectl rollout restart` sets on the pod
// template; kept, or every restart would be followed by a second rollout.
const restartedAtAnnotation = "kubectl.kubernetes.io/restartedAt"

// phase is one named step of a reconcile.
type phase struct {
	name string
	run  func() error
}

// reconcileDeployment makes the live Deployment's spec equal to the
// rendered one, everywhere: a server-side dry run fills in the API server's
// defaults, so the rendered spec compares equal to an unchanged live one
// (no write) and differs from one edited in any field, rendered or not.
// With holdTemplate the live pod template stays (no pod is rolled) and held
// says whether it differs from the rendered one.
func (r *ServerReconciler) reconcileDeployment(ctx context.Context, server *hyperdhcpv1beta1.Server, replica render.Replica, configHash string,
	holdTemplate bool) (d *appsv1.Deployment, held bool, err error) {
	desired, err := render.Deployment(server, replica, r.Image, configHash)
	if err != nil {
		return nil, false, err
	}
	d = &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: desired.Name, Namespace: desired.Namespace}}
	err = r.apply(ctx, server, d, true, func() error {
		setMeta(d, desired)
		spec := *desired.Spec.DeepCopy()
		if d.CreationTimestamp.IsZero() {
			d.Spec = spec
			return nil
		}
		spec.Selector = d.Spec.Selector // immutable
		if at, ok := d.Spec.Template.Annotations[restartedAtAnnotation]; ok {
			spec.Template.Annotations[restartedAtAnnotation] = at
		}
		dryRun := d.DeepCopy()
		dryRun.Spec = spec
		if err := r.Update(ctx, dryRun, client.DryRunAll); err != nil {
			return fmt.Errorf("default the rendered Deployment (dry run): %w", err)
		}
		// An active that serves nobody has nothing to keep: it rolls (a
		// fix for a crashing image must not wait for a standby that cannot
		// catch up without it).
		held = holdTemplate && d.Status.AvailableReplicas > 0 && !apiequality.Semantic.DeepEqual(d.Spec.Template, dryRun.Spec.Template)
		if held {
			dryRun.Spec.Template = d.Spec.Template
		}
		d.Spec = dryRun.Spec
		return nil
	})
	return d, held, err
}

// activeReplica is the index of the pair's active replica: the Lease's
// holder, else the one status last named, else replica 0 (so that a pair
// whose active is unknown still rolls one replica at a time).
func activeReplica(server *hyperdhcpv1beta1.Server, leaseHolder string) int {
	name := leaseHolder
	if ha := server.Status.HighAvailability; name == "" && ha != nil {
		name = ha.Active
	}
	for _, replica := range render.Replicas(server) {
		if render.ReplicaName(server, replica) == name {
			return replica.Index
		}
	}
	return 0
}

// standbyFirst orders the replicas so the standby's objects are
// reconciled before the active's: its rollout gates the active's.
func standbyFirst(replicas []render.Replica, active int) []render.Replica {
	ordered := make([]render.Replica, 0, len(replicas))
	for _, replica := range replicas {
		if replica.Index != active {
			ordered = append(ordered, replica)
		}
	}
	for _, replica := range replicas {
		if replica.Index == active {
			ordered = append(ordered, replica)
		}
	}
	return ordered
}

// rolledOut tells whether d runs only pods of its current template.
func rolledOut(d *appsv1.Deployment) bool {
	return d.Status.ObservedGeneration >= d.Generation && d.Status.UpdatedReplicas == ptrValue(d.Spec.Replicas) &&
		d.Status.Replicas == d.Status.UpdatedReplicas
}

// reconcileDelete removes what owner references cannot, then the finalizer.
func (r *ServerReconciler) reconcileDelete(ctx context.Context, server *hyperdhcpv1beta1.Server) error {
	if !controllerutil.ContainsFinalizer(server, Finalizer) {
		return nil
	}
	if err := r.pruneRBAC(ctx, server, nil, false); err != nil {
		return err
	}
	controllerutil.RemoveFinalizer(server, Finalizer)
	if err := r.Update(ctx, server); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("remove finalizer: %w", err)
	}
	return nil
}

// setInvalidSpec reports a spec that passed the API server but not
// Validate. Nothing of it is rendered: a hyperdhcpd already running keeps
// serving the spec before it, so a True Ready stays, and says which.
func setInvalidSpec(server *hyperdhcpv1beta1.Server, err error) {
	message := err.Error()
	if s := server.Status.Served; s != nil && s.Generation > 0 {
		message += fmt.Sprintf("; hyperdhcpd keeps serving generation %d", s.Generation)
	}
	if !meta.IsStatusConditionTrue(server.Status.Conditions, hyperdhcpv1beta1.ConditionReady) {
		setConditions(server, metav1.Condition{Type: hyperdhcpv1beta1.ConditionReady, Status: metav1.ConditionFalse,
			Reason: hyperdhcpv1beta1.ReasonInvalidSpec, Message: message})
	}
	setConditions(server,
		metav1.Condition{Type: hyperdhcpv1beta1.ConditionDegraded, Status: metav1.ConditionTrue, Reason: hyperdhcpv1beta1.ReasonInvalidSpec, Message: message},
		metav1.Condition{Type: hyperdhcpv1beta1.ConditionProgressing, Status: metav1.ConditionFalse, Reason: hyperdhcpv1beta1.ReasonInvalidSpec, Message: "waiting for a valid spec"},
	)
}

// setApplying keeps Progressing True while the pod is rolled out but
// hyperdhcpd has not reported serving the current generation: a live edit
// is on its way (or was refused, which Degraded says).
func setApplying(server *hyperdhcpv1beta1.Server) {
	s := server.Status.Served
	if s == nil || s.Generation >= server.Generation || meta.IsStatusConditionTrue(server.Status.Conditions, hyperdhcpv1beta1.ConditionProgressing) {
		return
	}
	if s.RefusedGeneration >= server.Generation {
		setConditions(server, metav1.Condition{Type: hyperdhcpv1beta1.ConditionProgressing, Status: metav1.ConditionFalse,
			Reason: hyperdhcpv1beta1.ReasonSpecRefused, Message: fmt.Sprintf("hyperdhcpd refused generation %d of the spec and serves %d", s.RefusedGeneration, s.Generation)})
		return
	}
	setConditions(server, metav1.Condition{Type: hyperdhcpv1beta1.ConditionProgressing, Status: metav1.ConditionTrue,
		Reason: hyperdhcpv1beta1.ReasonApplying, Message: fmt.Sprintf("hyperdhcpd serves generation %d of the spec; applying %d", s.Generation, server.Generation)})
}

// problem is one reason a Server is Degraded.
type problem struct{ reason, message string }

// setDegraded sets Degraded=True with the first (most severe) problem's
// reason and every problem's message; with none it leaves Degraded as the
// Deployment phase set it.
func setDegraded(server *hyperdhcpv1beta1.Server, problems []problem) {
	if len(problems) == 0 {
		return
	}
	messages := make([]string, len(problems))
	for i, p := range problems {
		messages[i] = p.message
	}
	setConditions(server, metav1.Condition{
		Type: hyperdhcpv1beta1.ConditionDegraded, Status: metav1.ConditionTrue,
		Reason: problems[0].reason, Message: strings.Join(messages, "; "),
	})
}

// setNetworkAttachmentNotFound gives the reason Ready is False while the
// pod cannot join its network. A pod already running keeps serving, so a
// True Ready stays.
func setNetworkAttachmentNotFound(server *hyperdhcpv1beta1.Server, message string) {
	if !meta.IsStatusConditionTrue(server.Status.Conditions, hyperdhcpv1beta1.ConditionReady) {
		setConditions(server, metav1.Condition{
			Type: hyperdhcpv1beta1.ConditionReady, Status: metav1.ConditionFalse,
			Reason: hyperdhcpv1beta1.ReasonNetworkAttachmentNotFound, Message: message,
		})
	}
}

// grantProblems describes what server asked for and was not granted. Its
// VMs elsewhere are not served, but hyperdhcpd runs, so Ready is left alone.
func grantProblems(server *hyperdhcpv1beta1.Server, grant consent.Grant) []problem {
	var problems []problem
	if len(grant.Refused) > 0 {
		message := fmt.Sprintf("VMs of namespaces %s are not served: they have not consented (their Namespace's annotation %s must list %s/%s or %s/%s)",
			strings.Join(grant.Refused, ", "), consent.Annotation, server.Namespace, server.Name, server.Namespace, consent.AnyServer)
		if len(grant.Malformed) > 0 {
			message += "; " + strings.Join(grant.Malformed, "; ")
		}
		problems = append(problems, problem{hyperdhcpv1beta1.ReasonNamespaceConsentMissing, message})
	}
	if grant.AllNamespacesRefused {
		problems = append(problems, problem{hyperdhcpv1beta1.ReasonAllNamespacesNotAllowed, fmt.Sprintf(
			"allNamespaces is not allowed (the operator runs without --allow-all-namespaces): only the VMs of namespace %s are served", server.Namespace)})
	}
	return problems
}

// setDeploymentConditions derives Ready and Progressing from the
// Deployments, one per replica: Ready while one of them serves (in a pair,
// the other takes over), Progressing while one rolls out. It returns the
// replicas that are not available when another is: a pair without its
// standby has no failover.
func setDeploymentConditions(server *hyperdhcpv1beta1.Server, deployments []*appsv1.Deployment) []problem {
	var down []string
	anyAvailable, allRolledOut := false, true
	for _, d := range deployments {
		rolledOut := rolledOut(d)
		available := d.Status.AvailableReplicas > 0 && rolledOut
		allRolledOut = allRolledOut && rolledOut
		anyAvailable = anyAvailable || available
		if !available {
			down = append(down, fmt.Sprintf("Deployment %s has %d available of %d replicas", d.Name, d.Status.AvailableReplicas, ptrValue(d.Spec.Replicas)))
		}
	}
	ready := metav1.Condition{Type: hyperdhcpv1beta1.ConditionReady, Status: metav1.ConditionTrue,
		Reason: hyperdhcpv1beta1.ReasonAvailable, Message: "hyperdhcpd is serving"}
	if !anyAvailable {
		ready.Status, ready.Reason, ready.Message = metav1.ConditionFalse, hyperdhcpv1beta1.ReasonDeploymentUnavailable, strings.Join(down, "; ")
	}
	progressing := metav1.Condition{Type: hyperdhcpv1beta1.ConditionProgressing, Status: metav1.ConditionFalse,
		Reason: hyperdhcpv1beta1.ReasonAvailable, Message: "the current spec is rolled out"}
	if !allRolledOut {
		progressing.Status, progressing.Reason, progressing.Message = metav1.ConditionTrue, hyperdhcpv1beta1.ReasonRollingOut, "rolling out the current spec"
	}
	setConditions(server, ready, progressing, metav1.Condition{
		Type: hyperdhcpv1beta1.ConditionDegraded, Status: metav1.ConditionFalse, Reason: hyperdhcpv1beta1.ReasonAvailable, Message: "no problems",
	})
	if !anyAvailable || len(down) == 0 {
		return nil
	}
	return []problem{{hyperdhcpv1beta1.ReasonReplicaUnavailable,
		"one replica of the pair is not available, so a failure of the other would stop DHCP: " + strings.Join(down, "; ")}}
}

func setConditions(server *hyperdhcpv1beta1.Server, conditions ...metav1.Condition) {
	for _, c := range conditions {
		c.ObservedGeneration = server.Generation
		meta.SetStatusCondition(&server.Status.Conditions, c)
	}
}

func ptrValue(p *int32) int32 {
	if p == nil {
		return 1
	}
	return *p
}

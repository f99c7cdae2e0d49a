package controller

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	hyperdhcpv1beta1 "github.com/hyperdhcp/hyperdhcp/apis/v1beta1"
	"github.com/hyperdhcp/hyperdhcp/operator/internal/render"
)

// pairCertificateLifetime is how long the pair's CA and certificate are
// valid; the Secret is made once and not rotated yet.
const pairCertificateLifetime = 10 * 365 * 24 * time.Hour

// reconcilePair makes what a highAvailability pair shares: the Secret with
// its CA and certificate (made once), the Lease it is elected by (made
// empty, so hyperdhcpd needs no create right) and a Service per replica for
// replication. Without highAvailability it removes them with the second
// replica's Deployment and ConfigMap; that replica's lease volume stays
// (owned by the Server), for when the pair comes back. It returns who holds
// the Lease now ("" if nobody or unknown).
func (r *ServerReconciler) reconcilePair(ctx context.Context, server *hyperdhcpv1beta1.Server) (holder string, err error) {
	if server.Spec.HighAvailability == nil {
		return "", r.removePair(ctx, server)
	}
	// Read past the cache: the operator watches neither Secrets nor Leases
	// (hyperdhcpd renews the Lease every few seconds).
	secret := &corev1.Secret{}
	switch err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: server.Namespace, Name: render.PairSecretName(server)}, secret); {
	case apierrors.IsNotFound(err):
		caPEM, certPEM, keyPEM, err := newPairCertificates(server)
		if err != nil {
			return "", err
		}
		if err := r.createOwned(ctx, server, render.PairSecret(server, caPEM, certPEM, keyPEM)); err != nil {
			return "", err
		}
	case err != nil:
		return "", fmt.Errorf("get Secret %s: %w", render.PairSecretName(server), err)
	}
	lease := &coordinationv1.Lease{}
	switch err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: server.Namespace, Name: render.Name(server)}, lease); {
	case apierrors.IsNotFound(err):
		if err := r.createOwned(ctx, server, render.Lease(server)); err != nil {
			return "", err
		}
	case err != nil:
		return "", fmt.Errorf("get Lease %s: %w", render.Name(server), err)
	case lease.Spec.HolderIdentity != nil:
		holder = *lease.Spec.HolderIdentity
	}
	for _, replica := range render.Replicas(server) {
		desired := render.Service(server, replica)
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: desired.Name, Namespace: desired.Namespace}}
		if err := r.apply(ctx, server, svc, true, func() error {
			setMeta(svc, desired)
			// clusterIP is the API server's
			svc.Spec.Selector, svc.Spec.Ports = desired.Spec.Selector, desired.Spec.Ports
			svc.Spec.PublishNotReadyAddresses = desired.Spec.PublishNotReadyAddresses
			return nil
		}); err != nil {
			return "", err
		}
	}
	return holder, nil
}

func (r *ServerReconciler) createOwned(ctx context.Context, server *hyperdhcpv1beta1.Server, obj client.Object) error {
	if err := controllerutil.SetControllerReference(server, obj, r.Scheme()); err != nil {
		return err
	}
	if err := r.Create(ctx, obj); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create %T %s: %w", obj, obj.GetName(), err)
	}
	return nil
}

// removePair deletes what only a pair needs, once there is a sign of it:
// one of the second replica's objects in the cache, controlled by server.
// (Without that check every reconcile of every single Server would send
// six deletes.) Only objects server controls are deleted: another Server
// may be named like the second replica (a Server "lab-1" beside "lab").
func (r *ServerReconciler) removePair(ctx context.Context, server *hyperdhcpv1beta1.Server) error {
	second := render.ReplicaName(server, render.Replica{Index: 1})
	key := func(n string) client.ObjectKey { return client.ObjectKey{Namespace: server.Namespace, Name: n} }
	// Kinds the controller owns, so in its cache already.
	cached := []client.Object{&appsv1.Deployment{}, &corev1.ConfigMap{}}
	found := false
	for _, obj := range cached {
		if err := r.Get(ctx, key(second), obj); err == nil && metav1.IsControlledBy(obj, server) {
			found = true
		} else if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("get %T %s: %w", obj, second, err)
		}
	}
	if !found {
		return nil
	}
	for _, o := range []struct {
		obj  client.Object
		name string
	}{
		// The objects found above go last: a removal that fails half-way
		// leaves the sign that has it retried.
		{&corev1.Secret{}, render.PairSecretName(server)},
		{&coordinationv1.Lease{}, render.Name(server)},
		{&corev1.Service{}, render.Name(server)},
		{&corev1.Service{}, second},
		{&corev1.ConfigMap{}, second},
		{&appsv1.Deployment{}, second},
	} {
		// Past the cache: Secrets and Leases are not watched.
		switch err := r.APIReader.Get(ctx, key(o.name), o.obj); {
		case apierrors.IsNotFound(err):
			continue
		case err != nil:
			return fmt.Errorf("get %T %s: %w", o.obj, o.name, err)
		case !metav1.IsControlledBy(o.obj, server):
			continue
		}
		if err := r.Delete(ctx, o.obj, client.Preconditions{UID: new(o.obj.GetUID())}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete %T %s: %w", o.obj, o.name, err)
		}
	}
	return nil
}

// newPairCertificates makes the pair's CA and the one certificate both
// replicas present (ECDSA P-256). The replicas accept a peer by this CA,
// not by name.
func newPairCertificates(server *hyperdhcpv1beta1.Server) (caPEM, certPEM, keyPEM []byte, err error) {
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	serial := func() (*big.Int, error) { return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127)) }
	caSerial, err := serial()
	if err != nil {
		return nil, nil, nil, err
	}
	caTemplate := &x509.Certificate{SerialNumber: caSerial, Subject: pkix.Name{CommonName: "hyperdhcpd pair CA " + server.Namespace + "/" + server.Name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(pairCertificateLifetime), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTemplate, caTemplate, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("create the pair's CA: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, nil, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	leafSerial, err := serial()
	if err != nil {
		return nil, nil, nil, err
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: leafSerial,
		Subject:   pkix.Name{CommonName: "hyperdhcpd " + server.Namespace + "/" + server.Name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(pairCertificateLifetime), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("create the pair's certificate: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), nil
}

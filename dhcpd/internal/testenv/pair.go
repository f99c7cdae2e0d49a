package testenv

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// PairFiles are the PEM files of a replica pair: its CA, and the
// certificate and key both replicas present.
type PairFiles struct {
	CA, Cert, Key string
}

// WritePairCerts writes a new CA and a certificate it signed into dir,
// named after prefix, as the operator gives a pair of replicas.
func WritePairCerts(dir, prefix string) (PairFiles, error) {
	write := func(name string, block *pem.Block) (string, error) {
		path := filepath.Join(dir, prefix+"-"+name+".pem")
		return path, os.WriteFile(path, pem.EncodeToMemory(block), 0o600)
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return PairFiles{}, err
	}
	caTemplate := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: prefix + " CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTemplate, caTemplate, &caKey.PublicKey, caKey)
	if err != nil {
		return PairFiles{}, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return PairFiles{}, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return PairFiles{}, err
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(2),
		Subject: pkix.Name{CommonName: prefix + " replica"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}},
		ca, &key.PublicKey, caKey)
	if err != nil {
		return PairFiles{}, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return PairFiles{}, err
	}
	var files PairFiles
	var errs [3]error
	files.CA, errs[0] = write("ca", &pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	files.Cert, errs[1] = write("cert", &pem.Block{Type: "CERTIFICATE", Bytes: leafDER})
	files.Key, errs[2] = write("key", &pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	for _, err := range errs {
		if err != nil {
			return PairFiles{}, fmt.Errorf("write pair certificates: %w", err)
		}
	}
	return files, nil
}

package attest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"

	"github.com/google/go-tpm/tpm2"
)

type tpmsAttest = tpm2.TPMSAttest

var fuzzKey = func() *ecdsa.PublicKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	return &k.PublicKey
}()

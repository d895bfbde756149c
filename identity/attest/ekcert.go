package attest

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// OIDs from the TCG EK Credential Profile for TPM 2.0.
var (
	oidSubjectAltName  = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidTCGKPEKCert     = asn1.ObjectIdentifier{2, 23, 133, 8, 1}
	oidTPMManufacturer = asn1.ObjectIdentifier{2, 23, 133, 2, 1}
	oidTPMModel        = asn1.ObjectIdentifier{2, 23, 133, 2, 2}
	oidTPMVersion      = asn1.ObjectIdentifier{2, 23, 133, 2, 3}
	directoryNameTag   = cbasn1.Tag(4).ContextSpecific().Constructed()
)

// TPMInfo is what an EK certificate's subject alternative name says about
// the TPM.
type TPMInfo struct {
	Manufacturer string `json:"manufacturer,omitempty"`
	Model        string `json:"model,omitempty"`
	Version      string `json:"version,omitempty"`
}

// verifyEKCert checks cert's chain to roots at time now. EK certificates
// need two narrow allowances Go's x509 does not make by itself:
//   - a critical subjectAltName holding only a directoryName with the TCG
//     TPM manufacturer/model/version attributes (Go only understands
//     DNS, email, IP and URI names and leaves it "unhandled");
//   - the extended key usage tcg-kp-EKCertificate, which Go does not
//     know; when the certificate has an EKU extension it must include it.
//
// Nothing else is relaxed: any other unhandled critical extension still
// fails verification.
func verifyEKCert(cert *x509.Certificate, roots, intermediates *x509.CertPool, now time.Time) (TPMInfo, error) {
	var info TPMInfo
	c := *cert
	c.UnhandledCriticalExtensions = nil
	for _, oid := range cert.UnhandledCriticalExtensions {
		if oid.Equal(oidSubjectAltName) {
			var ext []byte
			for _, e := range cert.Extensions {
				if e.Id.Equal(oidSubjectAltName) {
					ext = e.Value
				}
			}
			i, err := parseTPMSAN(ext)
			if err != nil {
				return info, fmt.Errorf("%w: subject alternative name: %v", ErrEKCertificate, err)
			}
			info = i
			continue
		}
		c.UnhandledCriticalExtensions = append(c.UnhandledCriticalExtensions, oid)
	}
	if len(cert.ExtKeyUsage) > 0 || len(cert.UnknownExtKeyUsage) > 0 {
		ok := false
		for _, u := range cert.UnknownExtKeyUsage {
			ok = ok || u.Equal(oidTCGKPEKCert)
		}
		if !ok {
			return info, fmt.Errorf("%w: extended key usage does not include tcg-kp-EKCertificate (2.23.133.8.1)", ErrEKCertificate)
		}
	}
	_, err := c.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: intermediates,
		CurrentTime:   now,
		// The EK's own usage was checked above; CA certificates of TPM
		// vendors carry assorted EKUs.
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return info, fmt.Errorf("%w: %v", ErrEKCertificate, err)
	}
	return info, nil
}

// parseTPMSAN parses a subjectAltName that must hold only directoryNames
// made of the TCG TPM attributes.
func parseTPMSAN(ext []byte) (TPMInfo, error) {
	var info TPMInfo
	in := cryptobyte.String(ext)
	var names cryptobyte.String
	if !in.ReadASN1(&names, cbasn1.SEQUENCE) || !in.Empty() {
		return info, fmt.Errorf("not a SEQUENCE of GeneralName")
	}
	if names.Empty() {
		return info, fmt.Errorf("no names")
	}
	for !names.Empty() {
		var dn cryptobyte.String
		var tag cbasn1.Tag
		if !names.ReadAnyASN1(&dn, &tag) {
			return info, fmt.Errorf("malformed GeneralName")
		}
		if tag != directoryNameTag {
			return info, fmt.Errorf("GeneralName with tag %#x is not a directoryName", uint8(tag))
		}
		var rdns pkix.RDNSequence
		rest, err := asn1.Unmarshal(dn, &rdns)
		if err != nil || len(rest) > 0 {
			return info, fmt.Errorf("malformed directoryName")
		}
		for _, rdn := range rdns {
			for _, atv := range rdn {
				v, ok := atv.Value.(string)
				if !ok {
					return info, fmt.Errorf("attribute %v is not a string", atv.Type)
				}
				switch {
				case atv.Type.Equal(oidTPMManufacturer):
					info.Manufacturer = v
				case atv.Type.Equal(oidTPMModel):
					info.Model = v
				case atv.Type.Equal(oidTPMVersion):
					info.Version = v
				default:
					return info, fmt.Errorf("attribute %v is not a TCG TPM attribute", atv.Type)
				}
			}
		}
	}
	return info, nil
}

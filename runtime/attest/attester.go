// Package attest is the attester side of zfaas node attestation: the
// worker's TPM client. It reads the EK certificate from the TPM's NV,
// loads the endorsement key, creates a restricted ECDSA P-256 attestation
// key, answers the verifier's credential-activation challenge and quotes
// PCRs with the verifier's nonce. The message types and the checks live
// in identity/attest.
//
// It must never export a key: the EK and AK stay in the TPM, and only
// public areas, the EK certificate, quotes and the activated secret leave
// it. It talks to the TPM only through the transport given to it.
package attest

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"sync"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	vattest "github.com/zfaas/zfaas/identity/attest"
)

// DefaultEventLog is where Linux exposes the firmware's TCG event log.
const DefaultEventLog = "/sys/kernel/security/tpm0/binary_bios_measurements"

// EK certificate NV indices and persistent EK handles from the TCG EK
// Credential Profile and Provisioning Guidance.
const (
	NVRSAEKCert      = tpm2.TPMHandle(0x01c00002) // RSA-2048, template L-1
	NVECCEKCert      = tpm2.TPMHandle(0x01c0000a) // ECC NIST P-256, template L-2
	NVECCP384EKCert  = tpm2.TPMHandle(0x01c00016) // ECC NIST P-384, template H-3
	PersistentRSAEK  = tpm2.TPMHandle(0x81010001)
	PersistentECCEK  = tpm2.TPMHandle(0x81010002)
	PersistentP384EK = tpm2.TPMHandle(0x81010016) // where swtpm_setup puts it
)

// EKKind selects which endorsement key the attester uses.
type EKKind string

// EK kinds.
const (
	// EKRSA is the RSA-2048 EK (certificate at 0x01c00002), the one
	// nearly every TPM ships with a certificate for. The default.
	EKRSA EKKind = "rsa"
	// EKECC is the ECC EK: P-256 (certificate at 0x01c0000a) when the
	// TPM has it, else P-384 (0x01c00016, as swtpm_setup --ecc makes).
	EKECC EKKind = "ecc"
)

// Config configures an Attester.
type Config struct {
	// TPM is an open TPM connection (OpenDevice or DialTCP). Required.
	// The Attester does not close it.
	TPM transport.TPM
	// Node is this worker's node name. Required.
	Node string
	// EK selects the endorsement key; EKRSA when empty.
	EK EKKind
	// EKChain are DER intermediate certificates to send with the EK
	// certificate, issuer first, for verifiers that lack them.
	EKChain [][]byte
	// EventLog is the path of the TCG event log; DefaultEventLog when
	// empty, "-" for none. A missing file means no log.
	EventLog string
	// Logger; discarded when nil.
	Logger *slog.Logger
}

// Attester holds a loaded EK and AK in the TPM. Its methods are safe for
// concurrent use but serialise on the TPM.
type Attester struct {
	cfg   Config
	mu    sync.Mutex
	ek    loaded
	ak    loaded
	hello vattest.Hello
}

type loaded struct {
	handle    tpm2.TPMHandle
	name      tpm2.TPM2BName
	public    tpm2.TPM2BPublic
	transient bool
	// userWithAuth reports whether the key's USER role accepts its
	// (empty) auth value; otherwise the EK policy is used.
	userWithAuth bool
	nameAlg      tpm2.TPMIAlgHash
}

// AKTemplate is the attestation key: a primary ECC P-256 restricted
// signing key in the endorsement hierarchy, ECDSA with SHA-256,
// fixedTPM/fixedParent/sensitiveDataOrigin, usable without
// dictionary-attack lockout.
var AKTemplate = tpm2.TPMTPublic{
	Type:    tpm2.TPMAlgECC,
	NameAlg: tpm2.TPMAlgSHA256,
	ObjectAttributes: tpm2.TPMAObject{
		FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true,
		UserWithAuth: true, NoDA: true, Restricted: true, SignEncrypt: true,
	},
	Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
		Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
		Scheme: tpm2.TPMTECCScheme{
			Scheme:  tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
		},
		CurveID: tpm2.TPMECCNistP256,
		KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
	}),
	Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
		X: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
		Y: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
	}),
}

// New reads the EK certificate, loads the EK and creates the AK. Close
// releases the TPM objects.
func New(ctx context.Context, cfg Config) (*Attester, error) {
	if cfg.TPM == nil {
		return nil, errors.New("attest: Config.TPM is required")
	}
	if cfg.Node == "" {
		return nil, errors.New("attest: Config.Node is required")
	}
	if cfg.EK == "" {
		cfg.EK = EKRSA
	}
	if cfg.EventLog == "" {
		cfg.EventLog = DefaultEventLog
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Logger = cfg.Logger.With("component", "attester")
	cfg.TPM = retrying{tpm: cfg.TPM}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	a := &Attester{cfg: cfg}
	var certIndex tpm2.TPMHandle
	var err error
	switch cfg.EK {
	case EKRSA:
		certIndex = NVRSAEKCert
		a.ek, err = a.loadEK(PersistentRSAEK, &tpm2.RSAEKTemplate)
	case EKECC:
		certIndex = NVECCEKCert
		if _, perr := (tpm2.NVReadPublic{NVIndex: NVECCEKCert}).Execute(cfg.TPM); perr != nil {
			// No P-256 certificate: P-384, persistent EK only (the
			// high-range templates are not built in here).
			certIndex = NVECCP384EKCert
			a.ek, err = a.loadEK(PersistentP384EK, nil)
		} else {
			a.ek, err = a.loadEK(PersistentECCEK, &tpm2.ECCEKTemplate)
		}
	default:
		return nil, fmt.Errorf("attest: unknown EK kind %q", cfg.EK)
	}
	if err != nil {
		return nil, err
	}
	cert, err := readNV(cfg.TPM, certIndex)
	if err != nil {
		a.Close()
		return nil, fmt.Errorf("attest: read EK certificate at NV %#x: %w", uint32(certIndex), err)
	}
	ak, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHEndorsement,
		InPublic:      tpm2.New2B(AKTemplate),
	}.Execute(cfg.TPM)
	if err != nil {
		a.Close()
		return nil, fmt.Errorf("attest: create AK: %w", err)
	}
	a.ak = loaded{handle: ak.ObjectHandle, name: ak.Name, public: ak.OutPublic, transient: true, userWithAuth: true, nameAlg: tpm2.TPMAlgSHA256}
	a.hello = vattest.Hello{
		Node:     cfg.Node,
		EKCert:   cert,
		EKChain:  cfg.EKChain,
		EKPublic: tpm2.Marshal(a.ek.public),
		AKPublic: tpm2.Marshal(a.ak.public),
	}
	cfg.Logger.LogAttrs(ctx, slog.LevelInfo, "TPM attester ready", slog.String("ek", string(cfg.EK)), slog.String("ek_cert_index", fmt.Sprintf("%#x", uint32(certIndex))))
	return a, nil
}

// loadEK uses the persistent EK at handle when there is one, else
// creates it from template (nil: no fallback).
func (a *Attester) loadEK(handle tpm2.TPMHandle, template *tpm2.TPMTPublic) (loaded, error) {
	if rp, err := (tpm2.ReadPublic{ObjectHandle: handle}).Execute(a.cfg.TPM); err == nil {
		pub, err := rp.OutPublic.Contents()
		if err != nil {
			return loaded{}, fmt.Errorf("attest: EK %#x public area: %w", uint32(handle), err)
		}
		return loaded{handle: handle, name: rp.Name, public: rp.OutPublic, userWithAuth: pub.ObjectAttributes.UserWithAuth, nameAlg: pub.NameAlg}, nil
	}
	if template == nil {
		return loaded{}, fmt.Errorf("attest: no persistent EK at %#x", uint32(handle))
	}
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHEndorsement,
		InPublic:      tpm2.New2B(*template),
	}.Execute(a.cfg.TPM)
	if err != nil {
		return loaded{}, fmt.Errorf("attest: create EK: %w", err)
	}
	return loaded{handle: rsp.ObjectHandle, name: rsp.Name, public: rsp.OutPublic, transient: true, nameAlg: template.NameAlg}, nil
}

// Hello returns the first protocol message.
func (a *Attester) Hello() *vattest.Hello {
	h := a.hello
	return &h
}

// Answer activates the challenge's credential with the EK, quotes the
// requested PCRs with its nonce and returns the evidence.
func (a *Attester) Answer(ctx context.Context, c *vattest.Challenge) (*vattest.Evidence, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	tpm := a.cfg.TPM
	ekAuth := tpm2.PasswordAuth(nil)
	if !a.ek.userWithAuth {
		// The TCG EK policy: PolicySecret(TPM_RH_ENDORSEMENT).
		ekAuth = tpm2.Policy(a.ek.nameAlg, 16, func(tpm transport.TPM, h tpm2.TPMISHPolicy, nonce tpm2.TPM2BNonce) error {
			_, err := tpm2.PolicySecret{
				AuthHandle:    tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
				PolicySession: h,
				NonceTPM:      nonce,
			}.Execute(tpm)
			return err
		})
	}
	act, err := tpm2.ActivateCredential{
		ActivateHandle: tpm2.NamedHandle{Handle: a.ak.handle, Name: a.ak.name},
		KeyHandle:      tpm2.AuthHandle{Handle: a.ek.handle, Name: a.ek.name, Auth: ekAuth},
		CredentialBlob: tpm2.TPM2BIDObject{Buffer: c.Credential},
		Secret:         tpm2.TPM2BEncryptedSecret{Buffer: c.Secret},
	}.Execute(tpm)
	if err != nil {
		return nil, fmt.Errorf("attest: activate credential: %w", err)
	}
	sel := c.PCRSelection()
	q, err := tpm2.Quote{
		SignHandle:     tpm2.NamedHandle{Handle: a.ak.handle, Name: a.ak.name},
		QualifyingData: tpm2.TPM2BData{Buffer: c.Nonce},
		InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
		PCRSelect:      sel,
	}.Execute(tpm)
	if err != nil {
		return nil, fmt.Errorf("attest: quote: %w", err)
	}
	pcrs, err := readPCRs(tpm, c.PCRs)
	if err != nil {
		return nil, err
	}
	ev := &vattest.Evidence{
		ChallengeID: c.ID,
		Secret:      act.CertInfo.Buffer,
		Quote:       q.Quoted.Bytes(),
		Signature:   tpm2.Marshal(q.Signature),
		PCRs:        pcrs,
	}
	if a.cfg.EventLog != "-" {
		log, err := readEventLog(a.cfg.EventLog)
		if err != nil {
			return nil, err
		}
		ev.EventLog = log
	}
	return ev, nil
}

// readPCRs reads SHA-256 PCR values, at most eight per TPM2_PCR_Read.
func readPCRs(tpm transport.TPM, pcrs []int) ([]vattest.PCR, error) {
	out := make([]vattest.PCR, 0, len(pcrs))
	for _, i := range pcrs {
		rsp, err := tpm2.PCRRead{PCRSelectionIn: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
			Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(uint(i)),
		}}}}.Execute(tpm)
		if err != nil {
			return nil, fmt.Errorf("attest: read PCR %d: %w", i, err)
		}
		if len(rsp.PCRValues.Digests) != 1 {
			return nil, fmt.Errorf("attest: PCR %d: SHA-256 bank not active", i)
		}
		out = append(out, vattest.PCR{Index: i, Digest: rsp.PCRValues.Digests[0].Buffer})
	}
	return out, nil
}

func readEventLog(path string) ([]byte, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("attest: event log: %w", err)
	}
	defer f.Close()
	buf := make([]byte, vattest.MaxEventLogSize+1)
	n, err := readFull(f, buf)
	if err != nil {
		return nil, fmt.Errorf("attest: event log %s: %w", path, err)
	}
	if n > vattest.MaxEventLogSize {
		return nil, fmt.Errorf("attest: event log %s is larger than %d bytes", path, vattest.MaxEventLogSize)
	}
	return buf[:n], nil
}

// readNV reads a whole NV index with its own (empty) auth, in chunks the
// TPM accepts.
func readNV(tpm transport.TPM, index tpm2.TPMHandle) ([]byte, error) {
	rp, err := tpm2.NVReadPublic{NVIndex: index}.Execute(tpm)
	if err != nil {
		return nil, err
	}
	pub, err := rp.NVPublic.Contents()
	if err != nil {
		return nil, err
	}
	const chunk = 512
	out := make([]byte, 0, pub.DataSize)
	for off := uint16(0); off < pub.DataSize; {
		n := min(pub.DataSize-off, chunk)
		r, err := tpm2.NVRead{
			AuthHandle: tpm2.AuthHandle{Handle: index, Name: rp.NVName, Auth: tpm2.PasswordAuth(nil)},
			NVIndex:    tpm2.NamedHandle{Handle: index, Name: rp.NVName},
			Size:       n,
			Offset:     off,
		}.Execute(tpm)
		if err != nil {
			return nil, err
		}
		out = append(out, r.Data.Buffer...)
		off += n
	}
	return trimDER(out), nil
}

// Close flushes the transient EK and AK from the TPM.
func (a *Attester) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	var errs []error
	for _, l := range []*loaded{&a.ak, &a.ek} {
		if l.transient && l.handle != 0 {
			if _, err := (tpm2.FlushContext{FlushHandle: l.handle}).Execute(a.cfg.TPM); err != nil {
				errs = append(errs, fmt.Errorf("attest: flush %#x: %w", uint32(l.handle), err))
			}
			l.handle = 0
		}
	}
	return errors.Join(errs...)
}

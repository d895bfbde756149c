package attest

import (
	"maps"
	"slices"
	"strconv"
	"time"
)

// Claims are the facts a successful attestation proved about a node. They
// are immutable once returned.
type Claims struct {
	// Node is the node name the attester presented.
	Node string `json:"node"`
	// Method is "tpm".
	Method string `json:"method"`
	// EKFingerprint is "sha256:" + hex SHA-256 of the EK certificate's
	// DER SubjectPublicKeyInfo.
	EKFingerprint string `json:"ek_fingerprint"`
	// EKChainVerified is true: the EK certificate chained to a configured
	// manufacturer root.
	EKChainVerified bool `json:"ek_chain_verified"`
	// TPM is what the EK certificate says about the TPM.
	TPM TPMInfo `json:"tpm"`
	// AKName is the hex TPM name of the AK (nameAlg || digest).
	AKName string `json:"ak_name"`
	// AK are the AK attributes that were checked.
	AK AKAttributes `json:"ak"`
	// QuoteVerified and NonceFresh are true: the quote's signature
	// verified with the AK and carried this challenge's nonce.
	QuoteVerified bool `json:"quote_verified"`
	NonceFresh    bool `json:"nonce_fresh"`
	// PCRBank is the quoted bank ("sha256").
	PCRBank string `json:"pcr_bank"`
	// PCRs maps PCR index to lower-case hex value, as quoted.
	PCRs map[int]string `json:"pcrs"`
	// Firmware holds the TPM's own facts from the quote.
	Firmware Firmware `json:"firmware"`
	// EventLog says whether an event log came and replayed.
	EventLog EventLogFacts `json:"event_log"`
	// AttestedAt is when Verify ran, UTC.
	AttestedAt time.Time `json:"attested_at"`
}

// Firmware are facts the TPM signs into every quote.
type Firmware struct {
	// Version is the TPM vendor's firmware version.
	Version uint64 `json:"tpm_firmware_version"`
	// ResetCount counts TPM resets (boots); RestartCount counts resumes.
	ResetCount   uint32 `json:"reset_count"`
	RestartCount uint32 `json:"restart_count"`
	// Safe is the TPM's clock-safe flag.
	Safe bool `json:"clock_safe"`
}

// EventLogFacts summarise the TCG event log, when one was sent.
type EventLogFacts struct {
	// Present is true when the attester sent a log.
	Present bool `json:"present"`
	// Replayed is true when the log's SHA-256 digests replay to every
	// quoted PCR value.
	Replayed bool `json:"replayed"`
	// Events counts the measured events (EV_NO_ACTION excluded).
	Events int `json:"events"`
	// Algorithms are the digest algorithms the log carries, e.g. "sha256".
	Algorithms []string `json:"algorithms,omitempty"`
}

// PolicyInput returns the input document of the zfaas.admission policy:
//
//	{"node", "method": "tpm",
//	 "ek": {"fingerprint", "chain_verified", "manufacturer", "model", "version"},
//	 "ak": {"fixed_tpm", "fixed_parent", "sensitive_data_origin", "restricted", "sign", "decrypt", "name"},
//	 "quote": {"verified", "nonce_fresh"},
//	 "pcrs": {"sha256": {"0": hex, ...}},
//	 "firmware": {"tpm_firmware_version", "reset_count", "restart_count", "clock_safe"},
//	 "event_log": {"present", "replayed", "events", "algorithms"},
//	 "attested_at": RFC 3339}
//
// Numbers are float64 and lists []any, as a JSON decoder would give them.
func (c Claims) PolicyInput() map[string]any {
	pcrs := make(map[string]any, len(c.PCRs))
	for _, i := range slices.Sorted(maps.Keys(c.PCRs)) {
		pcrs[strconv.Itoa(i)] = c.PCRs[i]
	}
	algs := make([]any, 0, len(c.EventLog.Algorithms))
	for _, a := range c.EventLog.Algorithms {
		algs = append(algs, a)
	}
	return map[string]any{
		"node":   c.Node,
		"method": c.Method,
		"ek": map[string]any{
			"fingerprint":    c.EKFingerprint,
			"chain_verified": c.EKChainVerified,
			"manufacturer":   c.TPM.Manufacturer,
			"model":          c.TPM.Model,
			"version":        c.TPM.Version,
		},
		"ak": map[string]any{
			"fixed_tpm":             c.AK.FixedTPM,
			"fixed_parent":          c.AK.FixedParent,
			"sensitive_data_origin": c.AK.SensitiveDataOrigin,
			"restricted":            c.AK.Restricted,
			"sign":                  c.AK.Sign,
			"decrypt":               c.AK.Decrypt,
			"name":                  c.AKName,
		},
		"quote": map[string]any{
			"verified":    c.QuoteVerified,
			"nonce_fresh": c.NonceFresh,
		},
		"pcrs": map[string]any{c.PCRBank: pcrs},
		"firmware": map[string]any{
			"tpm_firmware_version": float64(c.Firmware.Version),
			"reset_count":          float64(c.Firmware.ResetCount),
			"restart_count":        float64(c.Firmware.RestartCount),
			"clock_safe":           c.Firmware.Safe,
		},
		"event_log": map[string]any{
			"present":    c.EventLog.Present,
			"replayed":   c.EventLog.Replayed,
			"events":     float64(c.EventLog.Events),
			"algorithms": algs,
		},
		"attested_at": c.AttestedAt.UTC().Format(time.RFC3339Nano),
	}
}

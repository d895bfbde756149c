package tlcp

import "strconv"

// AlertError is an alert received from the peer or sent to it; errors.As
// finds it in a handshake or I/O error.
type AlertError struct {
	// Code is the alert description (e.g. 42 bad_certificate).
	Code uint8
	// Sent says whether this side sent the alert (false: the peer did).
	Sent bool
}

func (e *AlertError) Error() string {
	if e.Sent {
		return "tlcp: sent alert: " + alertText(e.Code)
	}
	return "tlcp: received alert: " + alertText(e.Code)
}

const (
	alertLevelWarning = 1
	alertLevelFatal   = 2
)

// Alert descriptions of GB/T 38636-2020 6.3.4 (the TLS 1.0 set plus the
// GM-specific 200–205).
const (
	alertCloseNotify            uint8 = 0
	alertUnexpectedMessage      uint8 = 10
	alertBadRecordMAC           uint8 = 20
	alertDecryptionFailed       uint8 = 21
	alertRecordOverflow         uint8 = 22
	alertDecompressionFailure   uint8 = 30
	alertHandshakeFailure       uint8 = 40
	alertBadCertificate         uint8 = 42
	alertUnsupportedCertificate uint8 = 43
	alertCertificateRevoked     uint8 = 44
	alertCertificateExpired     uint8 = 45
	alertCertificateUnknown     uint8 = 46
	alertIllegalParameter       uint8 = 47
	alertUnknownCA              uint8 = 48
	alertAccessDenied           uint8 = 49
	alertDecodeError            uint8 = 50
	alertDecryptError           uint8 = 51
	alertProtocolVersion        uint8 = 70
	alertInsufficientSecurity   uint8 = 71
	alertInternalError          uint8 = 80
	alertUserCanceled           uint8 = 90
	alertNoRenegotiation        uint8 = 100
	alertUnsupportedSite2Site   uint8 = 200
	alertNoArea                 uint8 = 201
	alertUnsupportedAreaType    uint8 = 202
	alertBadIBCParam            uint8 = 203
	alertUnsupportedIBCParam    uint8 = 204
	alertIdentityNeed           uint8 = 205
)

var alertNames = map[uint8]string{
	alertCloseNotify:            "close notify",
	alertUnexpectedMessage:      "unexpected message",
	alertBadRecordMAC:           "bad record MAC",
	alertDecryptionFailed:       "decryption failed",
	alertRecordOverflow:         "record overflow",
	alertDecompressionFailure:   "decompression failure",
	alertHandshakeFailure:       "handshake failure",
	alertBadCertificate:         "bad certificate",
	alertUnsupportedCertificate: "unsupported certificate",
	alertCertificateRevoked:     "revoked certificate",
	alertCertificateExpired:     "expired certificate",
	alertCertificateUnknown:     "unknown certificate",
	alertIllegalParameter:       "illegal parameter",
	alertUnknownCA:              "unknown certificate authority",
	alertAccessDenied:           "access denied",
	alertDecodeError:            "error decoding message",
	alertDecryptError:           "error decrypting message",
	alertProtocolVersion:        "protocol version not supported",
	alertInsufficientSecurity:   "insufficient security level",
	alertInternalError:          "internal error",
	alertUserCanceled:           "user canceled",
	alertNoRenegotiation:        "no renegotiation",
	alertUnsupportedSite2Site:   "unsupported site2site",
	alertNoArea:                 "no area",
	alertUnsupportedAreaType:    "unsupported area type",
	alertBadIBCParam:            "bad IBC parameter",
	alertUnsupportedIBCParam:    "unsupported IBC parameter",
	alertIdentityNeed:           "identity needed",
}

func alertText(code uint8) string {
	if s, ok := alertNames[code]; ok {
		return s
	}
	return "alert(" + strconv.Itoa(int(code)) + ")"
}

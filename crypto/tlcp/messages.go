package tlcp

import (
	"golang.org/x/crypto/cryptobyte"
)

// Handshake message types (GB/T 38636-2020 6.4.5).
const (
	typeHelloRequest       uint8 = 0
	typeClientHello        uint8 = 1
	typeServerHello        uint8 = 2
	typeCertificate        uint8 = 11
	typeServerKeyExchange  uint8 = 12
	typeCertificateRequest uint8 = 13
	typeServerHelloDone    uint8 = 14
	typeCertificateVerify  uint8 = 15
	typeClientKeyExchange  uint8 = 16
	typeFinished           uint8 = 20
)

const (
	randomLen       = 32
	maxSessionIDLen = 32
	// maxCertificates bounds a certificate message's chain.
	maxCertificates = 10
	// maxExtensions bounds the extensions of a hello.
	maxExtensions = 64

	extServerName = 0

	// certTypeECDSASign is the certificate type a server asks for: an SM2
	// signing certificate (GB/T 38636-2020 6.4.5.5 ecdsa_sign).
	certTypeECDSASign = 64
	curveTypeNamed    = 3
	// curveSM2 is the named curve of SM2 (RFC 8998 curveSM2).
	curveSM2 = 41
)

// handshakeMessage builds a message with its 4-byte header.
func handshakeMessage(typ uint8, body func(b *cryptobyte.Builder)) []byte {
	var b cryptobyte.Builder
	b.AddUint8(typ)
	b.AddUint24LengthPrefixed(body)
	return b.BytesOrPanic()
}

// readBody checks a message's header and returns its body.
func readBody(msg []byte, typ uint8) (cryptobyte.String, bool) {
	s := cryptobyte.String(msg)
	var t uint8
	var body cryptobyte.String
	if !s.ReadUint8(&t) || t != typ || !s.ReadUint24LengthPrefixed(&body) || !s.Empty() {
		return nil, false
	}
	return body, true
}

type clientHelloMsg struct {
	vers               uint16
	random             []byte
	sessionID          []byte
	cipherSuites       []uint16
	compressionMethods []uint8
	serverName         string
}

func (m *clientHelloMsg) marshal() []byte {
	return handshakeMessage(typeClientHello, func(b *cryptobyte.Builder) {
		b.AddUint16(m.vers)
		b.AddBytes(m.random)
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(m.sessionID) })
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			for _, s := range m.cipherSuites {
				b.AddUint16(s)
			}
		})
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(m.compressionMethods) })
		if m.serverName != "" {
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
				b.AddUint16(extServerName)
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
					b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
						b.AddUint8(0) // host_name
						b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(m.serverName)) })
					})
				})
			})
		}
	})
}

func (m *clientHelloMsg) unmarshal(msg []byte) bool {
	*m = clientHelloMsg{}
	s, ok := readBody(msg, typeClientHello)
	if !ok {
		return false
	}
	var sid, suites, comp cryptobyte.String
	if !s.ReadUint16(&m.vers) || !s.ReadBytes(&m.random, randomLen) ||
		!s.ReadUint8LengthPrefixed(&sid) || len(sid) > maxSessionIDLen ||
		!s.ReadUint16LengthPrefixed(&suites) || len(suites) < 2 || len(suites)%2 != 0 ||
		!s.ReadUint8LengthPrefixed(&comp) || len(comp) < 1 {
		return false
	}
	m.sessionID = append([]byte(nil), sid...)
	for !suites.Empty() {
		var id uint16
		suites.ReadUint16(&id)
		m.cipherSuites = append(m.cipherSuites, id)
	}
	m.compressionMethods = append([]byte(nil), comp...)
	if s.Empty() {
		return true
	}
	var exts cryptobyte.String
	if !s.ReadUint16LengthPrefixed(&exts) || !s.Empty() {
		return false
	}
	seen := map[uint16]bool{}
	for !exts.Empty() {
		var typ uint16
		var data cryptobyte.String
		if !exts.ReadUint16(&typ) || !exts.ReadUint16LengthPrefixed(&data) || seen[typ] || len(seen) >= maxExtensions {
			return false
		}
		seen[typ] = true
		if typ == extServerName {
			var list cryptobyte.String
			if !data.ReadUint16LengthPrefixed(&list) || list.Empty() || !data.Empty() {
				return false
			}
			for !list.Empty() {
				var nameType uint8
				var name cryptobyte.String
				if !list.ReadUint8(&nameType) || !list.ReadUint16LengthPrefixed(&name) || len(name) == 0 || len(name) > 255 {
					return false
				}
				if nameType == 0 && m.serverName == "" {
					m.serverName = string(name)
				}
			}
		}
	}
	return true
}

type serverHelloMsg struct {
	vers              uint16
	random            []byte
	sessionID         []byte
	cipherSuite       uint16
	compressionMethod uint8
}

func (m *serverHelloMsg) marshal() []byte {
	return handshakeMessage(typeServerHello, func(b *cryptobyte.Builder) {
		b.AddUint16(m.vers)
		b.AddBytes(m.random)
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(m.sessionID) })
		b.AddUint16(m.cipherSuite)
		b.AddUint8(m.compressionMethod)
	})
}

func (m *serverHelloMsg) unmarshal(msg []byte) bool {
	*m = serverHelloMsg{}
	s, ok := readBody(msg, typeServerHello)
	if !ok {
		return false
	}
	var sid cryptobyte.String
	if !s.ReadUint16(&m.vers) || !s.ReadBytes(&m.random, randomLen) ||
		!s.ReadUint8LengthPrefixed(&sid) || len(sid) > maxSessionIDLen ||
		!s.ReadUint16(&m.cipherSuite) || !s.ReadUint8(&m.compressionMethod) {
		return false
	}
	m.sessionID = append([]byte(nil), sid...)
	if s.Empty() {
		return true
	}
	// Extensions are parsed for well-formedness and ignored: this client
	// asks for none that changes the protocol.
	var exts cryptobyte.String
	if !s.ReadUint16LengthPrefixed(&exts) || !s.Empty() {
		return false
	}
	for n := 0; !exts.Empty(); n++ {
		var typ uint16
		var data cryptobyte.String
		if n >= maxExtensions || !exts.ReadUint16(&typ) || !exts.ReadUint16LengthPrefixed(&data) {
			return false
		}
	}
	return true
}

type certificateMsg struct {
	certificates [][]byte
}

func (m *certificateMsg) marshal() []byte {
	return handshakeMessage(typeCertificate, func(b *cryptobyte.Builder) {
		b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) {
			for _, c := range m.certificates {
				b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(c) })
			}
		})
	})
}

func (m *certificateMsg) unmarshal(msg []byte) bool {
	*m = certificateMsg{}
	s, ok := readBody(msg, typeCertificate)
	if !ok {
		return false
	}
	var list cryptobyte.String
	if !s.ReadUint24LengthPrefixed(&list) || !s.Empty() {
		return false
	}
	for !list.Empty() {
		var cert []byte
		if !list.ReadUint24LengthPrefixed((*cryptobyte.String)(&cert)) || len(cert) == 0 || len(m.certificates) >= maxCertificates {
			return false
		}
		m.certificates = append(m.certificates, cert)
	}
	return true
}

// serverKeyExchangeMsg carries the suite-specific body (parsed by the key
// exchange code).
type serverKeyExchangeMsg struct {
	params    []byte // ServerECDHParams (ECDHE only)
	signature []byte
}

func (m *serverKeyExchangeMsg) marshal() []byte {
	return handshakeMessage(typeServerKeyExchange, func(b *cryptobyte.Builder) {
		b.AddBytes(m.params)
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(m.signature) })
	})
}

// unmarshal parses an ECC (ecdhe false) or ECDHE body.
func (m *serverKeyExchangeMsg) unmarshal(msg []byte, ecdhe bool) bool {
	*m = serverKeyExchangeMsg{}
	s, ok := readBody(msg, typeServerKeyExchange)
	if !ok {
		return false
	}
	if ecdhe {
		start := s
		var curveType uint8
		var curve uint16
		var point cryptobyte.String
		if !s.ReadUint8(&curveType) || !s.ReadUint16(&curve) || !s.ReadUint8LengthPrefixed(&point) || len(point) == 0 {
			return false
		}
		m.params = start[:len(start)-len(s)]
	}
	var sig cryptobyte.String
	if !s.ReadUint16LengthPrefixed(&sig) || len(sig) == 0 || !s.Empty() {
		return false
	}
	m.signature = sig
	return true
}

// ecdhParams builds ServerECDHParams / ClientECDHParams for an SM2 point.
func ecdhParams(point []byte) []byte {
	var b cryptobyte.Builder
	b.AddUint8(curveTypeNamed)
	b.AddUint16(curveSM2)
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(point) })
	return b.BytesOrPanic()
}

// parseECDHParams returns the point of ECDH parameters on curveSM2.
func parseECDHParams(p []byte) ([]byte, bool) {
	s := cryptobyte.String(p)
	var curveType uint8
	var curve uint16
	var point cryptobyte.String
	if !s.ReadUint8(&curveType) || curveType != curveTypeNamed || !s.ReadUint16(&curve) || curve != curveSM2 ||
		!s.ReadUint8LengthPrefixed(&point) || len(point) == 0 || !s.Empty() {
		return nil, false
	}
	return point, true
}

type certificateRequestMsg struct {
	certTypes []byte
	cas       [][]byte
}

func (m *certificateRequestMsg) marshal() []byte {
	return handshakeMessage(typeCertificateRequest, func(b *cryptobyte.Builder) {
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(m.certTypes) })
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			for _, ca := range m.cas {
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(ca) })
			}
		})
	})
}

func (m *certificateRequestMsg) unmarshal(msg []byte) bool {
	*m = certificateRequestMsg{}
	s, ok := readBody(msg, typeCertificateRequest)
	if !ok {
		return false
	}
	var types, cas cryptobyte.String
	if !s.ReadUint8LengthPrefixed(&types) || len(types) == 0 || !s.ReadUint16LengthPrefixed(&cas) || !s.Empty() {
		return false
	}
	m.certTypes = types
	for !cas.Empty() {
		var dn cryptobyte.String
		if !cas.ReadUint16LengthPrefixed(&dn) || len(dn) == 0 {
			return false
		}
		m.cas = append(m.cas, dn)
	}
	return true
}

// opaque16Msg is a message whose body is one uint16-prefixed opaque
// value: ClientKeyExchange (the SM2 ciphertext, or the ClientECDHParams)
// and CertificateVerify (the signature).
type opaque16Msg struct {
	typ  uint8
	data []byte
}

func (m *opaque16Msg) marshal() []byte {
	return handshakeMessage(m.typ, func(b *cryptobyte.Builder) {
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(m.data) })
	})
}

func (m *opaque16Msg) unmarshal(msg []byte, typ uint8) bool {
	*m = opaque16Msg{typ: typ}
	s, ok := readBody(msg, typ)
	if !ok {
		return false
	}
	var d cryptobyte.String
	if !s.ReadUint16LengthPrefixed(&d) || len(d) == 0 || !s.Empty() {
		return false
	}
	m.data = d
	return true
}

// emptyMsg is ServerHelloDone (or HelloRequest).
func emptyMsg(typ uint8) []byte { return []byte{typ, 0, 0, 0} }

func finishedMsg(verify []byte) []byte {
	return handshakeMessage(typeFinished, func(b *cryptobyte.Builder) { b.AddBytes(verify) })
}

func parseFinished(msg []byte) ([]byte, bool) {
	s, ok := readBody(msg, typeFinished)
	if !ok || len(s) != finishedLen {
		return nil, false
	}
	return s, true
}

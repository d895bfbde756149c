package tlcp

import (
	"context"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"slices"

	"github.com/emmansun/gmsm/ecdh"
	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/sm3"
	"github.com/emmansun/gmsm/smx509"
)

// preMasterLen is the length of the pre-master secret of both key
// exchanges (GB/T 38636-2020 6.4.5.8; the ECDHE suites derive the same
// length with the SM2 key exchange).
const preMasterLen = 48

// writeHandshake queues a handshake message and adds it to the transcript.
func (c *Conn) writeHandshake(transcript hash.Hash, msg []byte) error {
	transcript.Write(msg)
	return c.writeRecordLocked(recordHandshake, msg)
}

// sendChangeCipherSpec queues change_cipher_spec and switches the write
// protection.
func (c *Conn) sendChangeCipherSpec() error {
	if err := c.writeRecordLocked(recordChangeCipherSpec, []byte{1}); err != nil {
		return err
	}
	return c.out.changeCipherSpec()
}

func newRandom(cfg *Config) ([]byte, error) {
	r := make([]byte, randomLen)
	binary.BigEndian.PutUint32(r, uint32(cfg.now().Unix()))
	if _, err := io.ReadFull(cfg.rand(), r[4:]); err != nil {
		return nil, err
	}
	return r, nil
}

func (c *Conn) serverHandshake(ctx context.Context) error {
	cfg := c.config
	transcript := sm3.New()

	msg, err := c.readHandshake()
	if err != nil {
		return err
	}
	var ch clientHelloMsg
	if msg[0] != typeClientHello {
		return c.fail(alertUnexpectedMessage, fmt.Errorf("got handshake message %d, want ClientHello", msg[0]))
	}
	if !ch.unmarshal(msg) {
		return c.fail(alertDecodeError, errors.New("malformed ClientHello"))
	}
	transcript.Write(msg)
	if ch.vers != VersionTLCP {
		return c.fail(alertProtocolVersion, fmt.Errorf("client version %#04x, want %#04x", ch.vers, VersionTLCP))
	}
	if !slices.Contains(ch.compressionMethods, 0) {
		return c.fail(alertHandshakeFailure, errors.New("client offers no null compression"))
	}
	c.state.ServerName = ch.serverName

	signCert, encCert := cfg.SignCertificate, cfg.EncCertificate
	if cfg.GetCertificates != nil {
		signCert, encCert, err = cfg.GetCertificates(&ClientHelloInfo{CipherSuites: ch.cipherSuites, ServerName: ch.serverName, Conn: c.conn, ctx: ctx})
		if err != nil {
			return c.fail(alertInternalError, fmt.Errorf("get certificates: %w", err))
		}
	}
	if signCert == nil || encCert == nil || len(signCert.Certificate) == 0 || len(encCert.Certificate) == 0 {
		return c.fail(alertInternalError, ErrNoCertificates)
	}
	encKey, encIsSM2 := encCert.PrivateKey.(*sm2.PrivateKey)

	var suite *cipherSuite
	for _, id := range cfg.suites() {
		s := suiteByID(id)
		if s == nil || !slices.Contains(ch.cipherSuites, id) {
			continue
		}
		// ECDHE needs the client's encryption certificate, so a client
		// certificate request, and our encryption key for the exchange.
		if s.ecdhe && (cfg.ClientAuth == NoClientCert || !encIsSM2) {
			continue
		}
		suite = s
		break
	}
	if suite == nil {
		return c.fail(alertHandshakeFailure, ErrNoSharedSuite)
	}
	c.state.Version = VersionTLCP
	c.state.CipherSuite = suite.id

	serverRandom, err := newRandom(cfg)
	if err != nil {
		return c.fail(alertInternalError, err)
	}
	sh := serverHelloMsg{vers: VersionTLCP, random: serverRandom, cipherSuite: suite.id}
	if err := c.writeHandshake(transcript, sh.marshal()); err != nil {
		return err
	}
	// Signing certificate, encryption certificate, then the signing
	// certificate's chain.
	certs := certificateMsg{certificates: [][]byte{signCert.Certificate[0], encCert.Certificate[0]}}
	certs.certificates = append(certs.certificates, signCert.Certificate[1:]...)
	if err := c.writeHandshake(transcript, certs.marshal()); err != nil {
		return err
	}

	// ServerKeyExchange: signed randoms and the encryption certificate
	// (ECC), or signed randoms and an ephemeral SM2 point (ECDHE).
	ske := serverKeyExchangeMsg{}
	var ephemeral *ecdh.PrivateKey
	tbs := make([]byte, 0, 2*randomLen+3+len(encCert.Certificate[0]))
	tbs = append(tbs, ch.random...)
	tbs = append(tbs, serverRandom...)
	if suite.ecdhe {
		ephemeral, err = ecdh.P256().GenerateKey(cfg.rand())
		if err != nil {
			return c.fail(alertInternalError, err)
		}
		ske.params = ecdhParams(ephemeral.PublicKey().Bytes())
		tbs = append(tbs, ske.params...)
	} else {
		n := len(encCert.Certificate[0])
		tbs = append(tbs, byte(n>>16), byte(n>>8), byte(n))
		tbs = append(tbs, encCert.Certificate[0]...)
	}
	if ske.signature, err = signSM2(cfg, signCert.PrivateKey, tbs); err != nil {
		return c.fail(alertInternalError, fmt.Errorf("sign ServerKeyExchange: %w", err))
	}
	if err := c.writeHandshake(transcript, ske.marshal()); err != nil {
		return err
	}

	askCert := cfg.ClientAuth != NoClientCert || suite.ecdhe
	if askCert {
		// An empty list of authorities: any, the client picks its
		// certificates itself.
		req := certificateRequestMsg{certTypes: []byte{certTypeECDSASign}}
		if err := c.writeHandshake(transcript, req.marshal()); err != nil {
			return err
		}
	}
	if err := c.writeHandshake(transcript, emptyMsg(typeServerHelloDone)); err != nil {
		return err
	}
	if err := c.flushLocked(); err != nil {
		return err
	}

	// The client's flight.
	var peer *peerCerts
	if askCert {
		if msg, err = c.readHandshake(); err != nil {
			return err
		}
		var cm certificateMsg
		if msg[0] != typeCertificate {
			return c.fail(alertUnexpectedMessage, fmt.Errorf("got handshake message %d, want Certificate", msg[0]))
		}
		if !cm.unmarshal(msg) {
			return c.fail(alertDecodeError, errors.New("malformed Certificate"))
		}
		transcript.Write(msg)
		switch {
		case len(cm.certificates) == 0:
			if cfg.ClientAuth >= RequireAnyClientCert && cfg.ClientAuth != VerifyClientCertIfGiven || suite.ecdhe {
				return c.fail(alertHandshakeFailure, errors.New("client sent no certificate"))
			}
		default:
			verify := cfg.ClientAuth >= VerifyClientCertIfGiven
			p, code, err := checkPeerCertificates(cfg, cm.certificates, suite.ecdhe, verify, cfg.ClientCAs, "")
			if err != nil {
				return c.fail(code, err)
			}
			if cfg.VerifyPeerCertificate != nil {
				if err := cfg.VerifyPeerCertificate(cm.certificates, p.chains); err != nil {
					return c.fail(alertBadCertificate, err)
				}
			}
			peer = p
			c.setPeer(p.all, p.sign, p.enc, p.chains)
		}
	}

	if msg, err = c.readHandshake(); err != nil {
		return err
	}
	var ckx opaque16Msg
	if msg[0] != typeClientKeyExchange {
		return c.fail(alertUnexpectedMessage, fmt.Errorf("got handshake message %d, want ClientKeyExchange", msg[0]))
	}
	if !ckx.unmarshal(msg, typeClientKeyExchange) {
		return c.fail(alertDecodeError, errors.New("malformed ClientKeyExchange"))
	}
	transcript.Write(msg)
	var preMaster []byte
	if suite.ecdhe {
		point, ok := parseECDHParams(ckx.data)
		if !ok {
			return c.fail(alertDecodeError, errors.New("malformed ClientECDHParams"))
		}
		preMaster, err = sm2KeyExchange(cfg, false, encKey, ephemeral, peer.enc, point)
		if err != nil {
			return c.fail(alertIllegalParameter, fmt.Errorf("SM2 key exchange: %w", err))
		}
	} else {
		// A failed decryption or a wrong version continues with a random
		// secret, so the client learns nothing before Finished fails.
		random := make([]byte, preMasterLen)
		if _, err := io.ReadFull(cfg.rand(), random); err != nil {
			return c.fail(alertInternalError, err)
		}
		pm, err := decryptSM2(cfg, encCert.PrivateKey, ckx.data)
		good := 0
		if err == nil && len(pm) == preMasterLen {
			good = subtle.ConstantTimeByteEq(pm[0], versHi) & subtle.ConstantTimeByteEq(pm[1], versLo)
		} else {
			pm = make([]byte, preMasterLen)
		}
		subtle.ConstantTimeCopy(1-good, pm, random)
		preMaster = pm
	}

	if peer != nil {
		// CertificateVerify: the client's signature over the SM3 hash of the
		// messages so far.
		digest := transcript.Sum(nil)
		if msg, err = c.readHandshake(); err != nil {
			return err
		}
		var cv opaque16Msg
		if msg[0] != typeCertificateVerify {
			return c.fail(alertUnexpectedMessage, fmt.Errorf("got handshake message %d, want CertificateVerify", msg[0]))
		}
		if !cv.unmarshal(msg, typeCertificateVerify) {
			return c.fail(alertDecodeError, errors.New("malformed CertificateVerify"))
		}
		pub, _ := sm2PublicKey(peer.sign)
		if !verifySM2(cfg, pub, digest, cv.data) {
			return c.fail(alertDecryptError, errors.New("client CertificateVerify signature is invalid"))
		}
		transcript.Write(msg)
	}
	if cfg.VerifyConnection != nil {
		if err := cfg.VerifyConnection(c.state); err != nil {
			return c.fail(alertBadCertificate, err)
		}
	}

	master := masterSecret(preMaster, ch.random, serverRandom)
	k := deriveKeys(suite, master, ch.random, serverRandom)
	if c.in.next, err = newProtection(suite, k.clientMAC, k.clientKey, k.clientIV); err != nil {
		return c.fail(alertInternalError, err)
	}
	if c.out.next, err = newProtection(suite, k.serverMAC, k.serverKey, k.serverIV); err != nil {
		return c.fail(alertInternalError, err)
	}

	if err := c.readChangeCipherSpec(); err != nil {
		return err
	}
	want := finishedData(master, true, transcript)
	if msg, err = c.readHandshake(); err != nil {
		return err
	}
	got, ok := parseFinished(msg)
	if !ok {
		if msg[0] != typeFinished {
			return c.fail(alertUnexpectedMessage, fmt.Errorf("got handshake message %d, want Finished", msg[0]))
		}
		return c.fail(alertDecodeError, errors.New("malformed Finished"))
	}
	if subtle.ConstantTimeCompare(got, want) != 1 {
		return c.fail(alertDecryptError, errors.New("client Finished is wrong"))
	}
	transcript.Write(msg)

	if err := c.sendChangeCipherSpec(); err != nil {
		return err
	}
	if err := c.writeHandshake(transcript, finishedMsg(finishedData(master, false, transcript))); err != nil {
		return err
	}
	return c.flushLocked()
}

// sm2KeyExchange runs the SM2 key exchange of GB/T 32918.3 for the ECDHE
// suites: the server is the initiator A, the client the responder B; the
// static keys are both sides' encryption keys, the ephemeral points travel
// in the key exchange messages, and both sides use the configured user id.
// It returns the 48-byte pre-master secret.
func sm2KeyExchange(cfg *Config, responder bool, static *sm2.PrivateKey, ephemeral *ecdh.PrivateKey, peerEnc *smx509.Certificate, peerPoint []byte) ([]byte, error) {
	if static == nil || ephemeral == nil || peerEnc == nil {
		return nil, errors.New("missing key exchange keys")
	}
	peerStatic, ok := sm2PublicKey(peerEnc)
	if !ok {
		return nil, errors.New("peer encryption key is not SM2")
	}
	peerStaticECDH, err := sm2.PublicKeyToECDH(peerStatic)
	if err != nil {
		return nil, err
	}
	peerEphemeral, err := ecdh.P256().NewPublicKey(peerPoint)
	if err != nil {
		return nil, fmt.Errorf("peer ephemeral point: %w", err)
	}
	staticECDH, err := static.ECDH()
	if err != nil {
		return nil, err
	}
	uv, err := staticECDH.SM2MQV(ephemeral, peerStaticECDH, peerEphemeral)
	if err != nil {
		return nil, err
	}
	uid := cfg.userID()
	return uv.SM2SharedKey(responder, preMasterLen, staticECDH.PublicKey(), peerStaticECDH, uid, uid)
}

package tlcp

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"

	"github.com/emmansun/gmsm/ecdh"
	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/sm3"
)

func (c *Conn) clientHandshake(ctx context.Context) error {
	cfg := c.config
	if !cfg.InsecureSkipVerify && cfg.ServerName == "" && cfg.VerifyPeerCertificate == nil && cfg.VerifyConnection == nil {
		return ErrNoVerification
	}
	hasClientCerts := cfg.GetClientCertificates != nil || cfg.SignCertificate != nil && cfg.EncCertificate != nil
	var offer []uint16
	for _, id := range cfg.suites() {
		s := suiteByID(id)
		if s == nil || s.ecdhe && !hasClientCerts {
			continue
		}
		offer = append(offer, id)
	}
	if len(offer) == 0 {
		return ErrNoSharedSuite
	}
	transcript := sm3.New()
	clientRandom, err := newRandom(cfg)
	if err != nil {
		return err
	}
	ch := clientHelloMsg{
		vers:               VersionTLCP,
		random:             clientRandom,
		cipherSuites:       offer,
		compressionMethods: []byte{0},
	}
	if cfg.ServerName != "" && net.ParseIP(cfg.ServerName) == nil && len(cfg.ServerName) <= 255 {
		ch.serverName = cfg.ServerName
	}
	c.state.ServerName = cfg.ServerName
	if err := c.writeHandshake(transcript, ch.marshal()); err != nil {
		return err
	}
	if err := c.flushLocked(); err != nil {
		return err
	}

	msg, err := c.readHandshake()
	if err != nil {
		return err
	}
	var sh serverHelloMsg
	if msg[0] != typeServerHello {
		return c.fail(alertUnexpectedMessage, fmt.Errorf("got handshake message %d, want ServerHello", msg[0]))
	}
	if !sh.unmarshal(msg) {
		return c.fail(alertDecodeError, errors.New("malformed ServerHello"))
	}
	transcript.Write(msg)
	if sh.vers != VersionTLCP {
		return c.fail(alertProtocolVersion, fmt.Errorf("server version %#04x, want %#04x", sh.vers, VersionTLCP))
	}
	if !slices.Contains(offer, sh.cipherSuite) {
		return c.fail(alertIllegalParameter, fmt.Errorf("server chose suite %s, which was not offered", CipherSuiteName(sh.cipherSuite)))
	}
	if sh.compressionMethod != 0 {
		return c.fail(alertIllegalParameter, errors.New("server chose compression"))
	}
	suite := suiteByID(sh.cipherSuite)
	c.state.Version = VersionTLCP
	c.state.CipherSuite = suite.id

	// Server certificates: signing, encryption, chain.
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
	if len(cm.certificates) < 2 {
		return c.fail(alertBadCertificate, errors.New("server sent fewer than two certificates (signing and encryption)"))
	}
	peer, code, err := checkPeerCertificates(cfg, cm.certificates, true, !cfg.InsecureSkipVerify, cfg.RootCAs, cfg.ServerName)
	if err != nil {
		return c.fail(code, err)
	}
	if cfg.VerifyPeerCertificate != nil {
		if err := cfg.VerifyPeerCertificate(cm.certificates, peer.chains); err != nil {
			return c.fail(alertBadCertificate, err)
		}
	}
	c.setPeer(peer.all, peer.sign, peer.enc, peer.chains)
	if cfg.VerifyConnection != nil {
		if err := cfg.VerifyConnection(c.state); err != nil {
			return c.fail(alertBadCertificate, err)
		}
	}

	if msg, err = c.readHandshake(); err != nil {
		return err
	}
	var ske serverKeyExchangeMsg
	if msg[0] != typeServerKeyExchange {
		return c.fail(alertUnexpectedMessage, fmt.Errorf("got handshake message %d, want ServerKeyExchange", msg[0]))
	}
	if !ske.unmarshal(msg, suite.ecdhe) {
		return c.fail(alertDecodeError, errors.New("malformed ServerKeyExchange"))
	}
	transcript.Write(msg)
	tbs := make([]byte, 0, 2*randomLen+3+len(cm.certificates[1]))
	tbs = append(tbs, clientRandom...)
	tbs = append(tbs, sh.random...)
	var serverPoint []byte
	if suite.ecdhe {
		p, ok := parseECDHParams(ske.params)
		if !ok {
			return c.fail(alertIllegalParameter, errors.New("ServerECDHParams are not on curveSM2"))
		}
		serverPoint = p
		tbs = append(tbs, ske.params...)
	} else {
		n := len(cm.certificates[1])
		tbs = append(tbs, byte(n>>16), byte(n>>8), byte(n))
		tbs = append(tbs, cm.certificates[1]...)
	}
	signPub, _ := sm2PublicKey(peer.sign)
	if !verifySM2(cfg, signPub, tbs, ske.signature) {
		return c.fail(alertDecryptError, errors.New("ServerKeyExchange signature is invalid"))
	}

	if msg, err = c.readHandshake(); err != nil {
		return err
	}
	var req *certificateRequestMsg
	if msg[0] == typeCertificateRequest {
		req = new(certificateRequestMsg)
		if !req.unmarshal(msg) {
			return c.fail(alertDecodeError, errors.New("malformed CertificateRequest"))
		}
		transcript.Write(msg)
		if msg, err = c.readHandshake(); err != nil {
			return err
		}
	}
	if msg[0] != typeServerHelloDone {
		return c.fail(alertUnexpectedMessage, fmt.Errorf("got handshake message %d, want ServerHelloDone", msg[0]))
	}
	if len(msg) != 4 {
		return c.fail(alertDecodeError, errors.New("malformed ServerHelloDone"))
	}
	transcript.Write(msg)
	if suite.ecdhe && req == nil {
		return c.fail(alertHandshakeFailure, errors.New("ECDHE suite without a certificate request"))
	}

	// Our flight: Certificate, ClientKeyExchange, CertificateVerify,
	// change_cipher_spec, Finished.
	var mySign, myEnc *Certificate
	if req != nil {
		mySign, myEnc = cfg.SignCertificate, cfg.EncCertificate
		if cfg.GetClientCertificates != nil {
			mySign, myEnc, err = cfg.GetClientCertificates(&CertificateRequestInfo{AcceptableCAs: req.cas, CipherSuite: suite.id, ctx: ctx})
			if err != nil {
				return c.fail(alertInternalError, fmt.Errorf("get client certificates: %w", err))
			}
		}
		if mySign != nil && len(mySign.Certificate) == 0 {
			mySign = nil
		}
		if myEnc != nil && len(myEnc.Certificate) == 0 {
			myEnc = nil
		}
		out := certificateMsg{}
		if mySign != nil {
			out.certificates = append(out.certificates, mySign.Certificate[0])
			if myEnc != nil {
				out.certificates = append(out.certificates, myEnc.Certificate[0])
			}
			out.certificates = append(out.certificates, mySign.Certificate[1:]...)
		}
		if suite.ecdhe && (mySign == nil || myEnc == nil) {
			return c.fail(alertHandshakeFailure, errors.New("an ECDHE suite needs the client's signing and encryption certificates"))
		}
		if err := c.writeHandshake(transcript, out.marshal()); err != nil {
			return err
		}
	}

	var preMaster []byte
	ckx := opaque16Msg{typ: typeClientKeyExchange}
	if suite.ecdhe {
		encKey, ok := myEnc.PrivateKey.(*sm2.PrivateKey)
		if !ok {
			return c.fail(alertInternalError, errors.New("ECDHE needs the client encryption key as *sm2.PrivateKey"))
		}
		ephemeral, err := ecdh.P256().GenerateKey(cfg.rand())
		if err != nil {
			return c.fail(alertInternalError, err)
		}
		preMaster, err = sm2KeyExchange(cfg, true, encKey, ephemeral, peer.enc, serverPoint)
		if err != nil {
			return c.fail(alertIllegalParameter, fmt.Errorf("SM2 key exchange: %w", err))
		}
		ckx.data = ecdhParams(ephemeral.PublicKey().Bytes())
	} else {
		preMaster = make([]byte, preMasterLen)
		preMaster[0], preMaster[1] = versHi, versLo
		if _, err := io.ReadFull(cfg.rand(), preMaster[2:]); err != nil {
			return c.fail(alertInternalError, err)
		}
		encPub, _ := sm2PublicKey(peer.enc)
		if ckx.data, err = sm2.EncryptASN1(cfg.rand(), encPub, preMaster); err != nil {
			return c.fail(alertInternalError, fmt.Errorf("encrypt pre-master secret: %w", err))
		}
	}
	if err := c.writeHandshake(transcript, ckx.marshal()); err != nil {
		return err
	}
	if mySign != nil {
		cv := opaque16Msg{typ: typeCertificateVerify}
		if cv.data, err = signSM2(cfg, mySign.PrivateKey, transcript.Sum(nil)); err != nil {
			return c.fail(alertInternalError, fmt.Errorf("sign CertificateVerify: %w", err))
		}
		if err := c.writeHandshake(transcript, cv.marshal()); err != nil {
			return err
		}
	}

	master := masterSecret(preMaster, clientRandom, sh.random)
	k := deriveKeys(suite, master, clientRandom, sh.random)
	if c.out.next, err = newProtection(suite, k.clientMAC, k.clientKey, k.clientIV); err != nil {
		return c.fail(alertInternalError, err)
	}
	if c.in.next, err = newProtection(suite, k.serverMAC, k.serverKey, k.serverIV); err != nil {
		return c.fail(alertInternalError, err)
	}
	if err := c.sendChangeCipherSpec(); err != nil {
		return err
	}
	if err := c.writeHandshake(transcript, finishedMsg(finishedData(master, true, transcript))); err != nil {
		return err
	}
	if err := c.flushLocked(); err != nil {
		return err
	}

	if err := c.readChangeCipherSpec(); err != nil {
		return err
	}
	want := finishedData(master, false, transcript)
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
		return c.fail(alertDecryptError, errors.New("server Finished is wrong"))
	}
	return nil
}

package attest

import (
	"errors"
	"strings"
	"testing"
)

func TestParseMessages(t *testing.T) {
	id := strings.Repeat("ab", 16)
	cases := []struct {
		name  string
		parse func([]byte) error
		in    string
		ok    bool
	}{
		{"hello", hello, `{"node":"w1","ek_cert":"AQ==","ek_public":"AQ==","ak_public":"AQ=="}`, true},
		{"hello unknown field", hello, `{"node":"w1","ek_cert":"AQ==","ek_public":"AQ==","ak_public":"AQ==","x":1}`, false},
		{"hello trailing data", hello, `{"node":"w1","ek_cert":"AQ==","ek_public":"AQ==","ak_public":"AQ=="} {}`, false},
		{"hello bad node", hello, `{"node":"../w1","ek_cert":"AQ==","ek_public":"AQ==","ak_public":"AQ=="}`, false},
		{"hello no cert", hello, `{"node":"w1","ek_public":"AQ==","ak_public":"AQ=="}`, false},
		{"hello huge", hello, `{"node":"w1","ek_cert":"` + strings.Repeat("A", MaxHelloSize) + `"}`, false},
		{"hello long chain", hello, `{"node":"w1","ek_cert":"AQ==","ek_public":"AQ==","ak_public":"AQ==","ek_chain":["AQ==","AQ==","AQ==","AQ==","AQ==","AQ==","AQ==","AQ==","AQ=="]}`, false},
		{"challenge", challenge, `{"id":"` + id + `","credential":"AQ==","secret":"AQ==","nonce":"AQ==","bank":"sha256","pcrs":[0,7]}`, true},
		{"challenge sha1", challenge, `{"id":"` + id + `","credential":"AQ==","secret":"AQ==","nonce":"AQ==","bank":"sha1","pcrs":[0]}`, false},
		{"challenge unsorted", challenge, `{"id":"` + id + `","credential":"AQ==","secret":"AQ==","nonce":"AQ==","bank":"sha256","pcrs":[7,0]}`, false},
		{"challenge pcr 24", challenge, `{"id":"` + id + `","credential":"AQ==","secret":"AQ==","nonce":"AQ==","bank":"sha256","pcrs":[24]}`, false},
		{"challenge bad id", challenge, `{"id":"XYZ","credential":"AQ==","secret":"AQ==","nonce":"AQ==","bank":"sha256","pcrs":[0]}`, false},
		{"evidence", evidence, `{"challenge_id":"` + id + `","secret":"AQ==","quote":"AQ==","signature":"AQ==","pcrs":[{"index":0,"digest":"` + zero32 + `"}]}`, true},
		{"evidence duplicate pcr", evidence, `{"challenge_id":"` + id + `","secret":"AQ==","quote":"AQ==","signature":"AQ==","pcrs":[{"index":0,"digest":"` + zero32 + `"},{"index":0,"digest":"` + zero32 + `"}]}`, false},
		{"evidence short pcr", evidence, `{"challenge_id":"` + id + `","secret":"AQ==","quote":"AQ==","signature":"AQ==","pcrs":[{"index":0,"digest":"AQ=="}]}`, false},
		{"evidence negative pcr", evidence, `{"challenge_id":"` + id + `","secret":"AQ==","quote":"AQ==","signature":"AQ==","pcrs":[{"index":-1,"digest":"` + zero32 + `"}]}`, false},
		{"evidence not json", evidence, `{`, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.parse([]byte(tc.in))
			if tc.ok && err != nil {
				t.Fatalf("got %v, want success", err)
			}
			if !tc.ok && !errors.Is(err, ErrMalformed) {
				t.Fatalf("got %v, want ErrMalformed", err)
			}
		})
	}
}

const zero32 = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="

func hello(b []byte) error     { _, err := ParseHello(b); return err }
func challenge(b []byte) error { _, err := ParseChallenge(b); return err }
func evidence(b []byte) error  { _, err := ParseEvidence(b); return err }

func FuzzParseMessages(f *testing.F) {
	f.Add([]byte(`{"node":"w1","ek_cert":"AQ==","ek_public":"AQ==","ak_public":"AQ=="}`))
	f.Add([]byte(`{"challenge_id":"abababababababababababababababab","secret":"AQ==","quote":"AQ==","signature":"AQ==","pcrs":[{"index":0,"digest":"` + zero32 + `"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, p := range []func([]byte) error{hello, challenge, evidence} {
			if err := p(b); err != nil && !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
		}
	})
}

// FuzzTPMStructures feeds hostile bytes to the TPM structure decoders and
// the AK, signature and event log checks: they must fail cleanly.
func FuzzTPMStructures(f *testing.F) {
	f.Add([]byte{0, 0x22, 0, 0x23, 0, 0x0b, 0, 4, 0x04, 0x72, 0, 0x10})
	f.Add([]byte{0, 0x18, 0, 0x0b, 0, 0x20})
	f.Add([]byte{0xff, 0x54, 0x43, 0x47, 0x80, 0x18, 0, 0x22})
	f.Fuzz(func(t *testing.T, b []byte) {
		if pub, err := parsePublic("fuzz", b); err == nil {
			checkAK(pub)
		}
		unmarshal[tpmsAttest]("fuzz", b)
		verifySignature(fuzzKey, b, b)
		replayEventLog(b, map[int][]byte{0: make([]byte, 32)})
	})
}
